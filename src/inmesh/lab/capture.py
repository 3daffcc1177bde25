"""A packet capture on a lab link: tcpdump inside the link's netns, writing a pcap file.

`Capture` (a context manager) starts tcpdump, waits until it says it is listening, and on
`stop` interrupts it so that it writes out what it holds, then returns the file's bytes. The
capture is on a bridge inside a namespace the lab made, never on a root-namespace interface.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from inmesh.errors import KernelError
from inmesh.netns import nsenter_argv

START_TIMEOUT_S = 10.0
"""tcpdump opens the interface in milliseconds; 10 s means it is not going to."""
STOP_TIMEOUT_S = 10.0
"""tcpdump flushes and exits at once on SIGINT; after this it is killed."""


class Capture:
    def __init__(self, netns_path: str, ifname: str, out: Path) -> None:
        # -Z root: tcpdump would drop to its own user, which may not write into the lab root.
        self.argv = [*nsenter_argv(netns_path), "tcpdump", "-i", ifname, "-n", "-U",
                     "--immediate-mode", "-Z", "root", "-w", str(out)]  # fmt: skip
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages = b""
        """What tcpdump wrote to stderr (its 'listening on' line, counts, errors)."""

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise KernelError(f"cannot run tcpdump: {exc}") from exc
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"listening on" not in self.messages:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KernelError(f"tcpdump did not start within {START_TIMEOUT_S:g}s")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            chunk = os.read(self.proc.stderr.fileno(), 4096) if ready else b""
            self.messages += chunk
            if ready and not chunk:
                raise KernelError(f"tcpdump exited: {self.messages.decode(errors='replace')}")

    def stop(self) -> bytes:
        """Interrupt tcpdump and return the capture (b"" if it never wrote one). Idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr is not None and not proc.stderr.closed:
            self.messages += proc.stderr.read()
            proc.stderr.close()
        try:
            return self.out.read_bytes()
        except FileNotFoundError:
            return b""
