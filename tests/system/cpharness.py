"""A real `inmesh controlplane serve` process for system tests, with its state under a short dir."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from inmesh.cluster.store import FileClusterStore

INMESH = str(Path(sys.executable).with_name("inmesh"))


class ControlPlane:
    """`inmesh controlplane serve` on a unix socket, with its state and store under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.store = FileClusterStore(str(root / "cluster.json"))
        self.socket = root / "cp.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        with open(self.root / "cp.log", "ab") as log:
            self.proc = subprocess.Popen(
                [INMESH, "controlplane", "serve", "--state-dir", str(self.state), "--store",
                 self.store.path, "--listen", self.target], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.proc.poll() is None, (self.root / "cp.log").read_text()
            assert time.monotonic() < deadline, "control plane did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def credential(self, node: str) -> Path:
        out = self.root / f"cred-{node}"
        subprocess.run([INMESH, "controlplane", "node-credential", "--state-dir",
                        str(self.state), "--node", node, "--out", str(out)],
                       check=True, capture_output=True)
        return out


@contextlib.contextmanager
def control_plane() -> Iterator[ControlPlane]:
    with tempfile.TemporaryDirectory(prefix="imcp-", dir="/tmp") as d:  # short: socket path
        plane = ControlPlane(Path(d))
        try:
            yield plane
        finally:
            plane.stop()
