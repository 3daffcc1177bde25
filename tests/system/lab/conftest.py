"""A private lab per test: its own root under tmp_path and node names no one else uses.

Teardown runs `Lab.down()` and then removes, by name and pid, anything the records still
list, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inmesh.errors import InmeshError
from inmesh.lab import namespaces, procs
from inmesh.lab.lab import Lab
from inmesh.lab.layout import netns_path, node_netns_name
from inmesh.lab.settings import LabSettings
from inmesh.lab.state import LabState, PodRecord
from inmesh.netns import run_in_netns

INMESH = os.path.join(os.path.dirname(sys.executable), "inmesh")
TEST_SETTINGS = LabSettings(ready_timeout_s=30.0, stop_grace_s=5.0, pod_add_backoff_s=0.1)


@dataclass
class LabEnv:
    root: Path
    prefix: str
    lab: Lab
    messages: list[str]

    @property
    def node(self) -> str:
        return f"{self.prefix}1"

    @property
    def node_netns(self) -> str:
        return node_netns_name(self.node)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `inmesh lab ARGS --root ROOT` (the real command line)."""
        argv = [INMESH, "lab", *args]
        if "--" in argv:
            cut = argv.index("--")
            argv[cut:cut] = ["--root", str(self.root)]
        else:
            argv += ["--root", str(self.root)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
        return proc

    def up(self) -> None:
        self.cli("up", "--node-prefix", self.prefix)


def _force_cleanup(state: LabState, prefix: str) -> None:
    """Whatever `down` missed: recorded pids (if still ours), recorded and node namespaces,
    the control plane's socket."""
    for rec in state.processes.values():
        procs.stop(rec, 2.0, 0.05)
    if state.controlplane_socket:
        Path(state.controlplane_socket).unlink(missing_ok=True)
    for node in state.nodes.values():
        for rec in node.processes.values():
            procs.stop(rec, 2.0, 0.05)
    for pod in state.pods.values():
        for rec in pod.processes.values():
            procs.stop(rec, 2.0, 0.05)
        namespaces.delete(pod.netns)
    for name in namespaces.list_names(f"inmesh-{prefix}"):
        namespaces.delete(name)


@pytest.fixture
def lab_env(tmp_path: Path) -> Iterator[LabEnv]:
    prefix = f"lt{secrets.token_hex(3)}n"
    messages: list[str] = []
    root = tmp_path / "lab"
    lab = Lab(root, TEST_SETTINGS, report=messages.append)
    env = LabEnv(root, prefix, lab, messages)
    try:
        yield env
    finally:
        try:
            state = lab.state.load()
        except InmeshError:
            state = LabState()
        try:
            lab.down()
        finally:
            _force_cleanup(state, prefix)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. a lab root): what a lab left running."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


WORKER_MODULE = "inmesh.ztunnel.worker"


def worker_pids(ztunnel_pid: int) -> list[int]:
    """ztunnel's inbound worker processes (its children running the worker module)."""
    out = []
    for tid in os.listdir(f"/proc/{ztunnel_pid}/task"):
        with open(f"/proc/{ztunnel_pid}/task/{tid}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    if WORKER_MODULE.encode() in c.read():
                        out.append(int(child))
    return out


def pids_on_15008(pod_netns: str, state: str) -> set[int]:
    """Pids holding sockets of port 15008 in ``state`` (listening, established) in the pod."""
    text = subprocess.run(
        ["nsenter", f"--net={pod_netns}", "ss", "-tnpH", "state", state, "( sport = :15008 )"],
        capture_output=True, text=True, check=True, timeout=10).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", text)}


def send_and_read(client: PodRecord, server_ip: str, listener: socket.socket, line: bytes,
                  port: int = 8080, timeout: float = 10.0) -> tuple[str, bytes]:
    """Connect from pod ``client`` to ``server_ip:port`` (accepted on ``listener`` in the
    server pod), send ``line`` (ending in a newline), have it acknowledged; return (the peer
    address the server saw, the bytes it read)."""
    sock = run_in_netns(netns_path(client.netns), socket.socket)
    with sock:
        sock.settimeout(timeout)
        sock.connect((server_ip, port))
        sock.sendall(line)
        conn, peer = listener.accept()
        with conn:
            conn.settimeout(timeout)
            got = b""
            while not got.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                got += chunk
            conn.sendall(b"ack " + got)
        assert sock.recv(4096).startswith(b"ack ")
    return str(peer[0]), got
