"""Fixtures for the CNI tests: a short run dir for unix sockets, and the plugin run as a process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

PLUGIN = os.path.join(os.path.dirname(sys.executable), "inmesh-cni")
"""The console script, exactly as pip installed it (what `inmesh cni install` copies)."""

POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=uid-1"
PLUGIN_TIMEOUT_SECONDS = 30.0
"""Bound on one plugin run in tests (they take well under a second)."""


@dataclass(frozen=True)
class PluginRun:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def output(self) -> dict[str, Any]:
        obj = json.loads(self.stdout)
        assert isinstance(obj, dict)
        return obj


def run_plugin(
    command: str,
    stdin: dict[str, Any] | bytes,
    *,
    plugin: str = PLUGIN,
    netns: str = "/var/run/netns/cni-test",
    args: str | None = POD_ARGS,
    container_id: str = "c0ffee01",
    ifname: str = "eth0",
    unset: tuple[str, ...] = (),
) -> PluginRun:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
    }
    if args is not None:
        env["CNI_ARGS"] = args
    for name in unset:
        env.pop(name, None)
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    proc = subprocess.run(
        [plugin],
        input=data,
        capture_output=True,
        env=env,
        timeout=PLUGIN_TIMEOUT_SECONDS,
        check=False,
    )
    return PluginRun(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))


@pytest.fixture
def run_dir() -> Iterator[str]:
    """A short directory for unix sockets (sun_path holds 108 bytes; tmp_path can be longer)."""
    path = tempfile.mkdtemp(prefix="imcni-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
