"""A real `inmesh agent` process in a node netns, and a recording proxy on its ZDS socket."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inmesh.cluster.store import FileClusterStore
from inmesh.zds.client import ZdsClient, ZdsClientSettings
from inmesh.zds.messages import WorkloadInfo

INMESH = str(Path(sys.executable).with_name("inmesh"))


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def http_call(sock: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    conn = _UnixHTTP(sock)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode())
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class RecordingProxy:
    """A ZDS client that acknowledges everything and records what it was told."""

    path: str
    adds: list[tuple[str, WorkloadInfo]] = field(default_factory=list)
    dels: list[str] = field(default_factory=list)
    snapshots: list[frozenset[str]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[None] | None = None
    _thread: threading.Thread | None = None

    async def add_workload(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        os.close(netns_fd)
        self.adds.append((uid, info))

    async def del_workload(self, uid: str) -> None:
        self.dels.append(uid)

    async def snapshot_done(self, keep: frozenset[str]) -> None:
        self.snapshots.append(keep)

    def connection_changed(self, connected: bool) -> None:
        pass

    def start(self) -> RecordingProxy:
        ready = threading.Event()

        def main() -> None:
            async def body() -> None:
                self._loop = asyncio.get_running_loop()
                self._task = asyncio.current_task()  # type: ignore[assignment]
                ready.set()
                client = ZdsClient(self.path, self, ZdsClientSettings(max_backoff=0.2))
                with contextlib.suppress(asyncio.CancelledError):
                    await client.run()

            asyncio.run(body())

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        if self._loop and self._task:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread:
            self._thread.join(5)


@dataclass
class AgentProcess:
    node_netns: str
    root: Path
    backend: str = "auto"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def store(self) -> FileClusterStore:
        return FileClusterStore(str(self.root / "cluster.json"))

    @property
    def plugin_socket(self) -> str:
        return str(self.root / "run" / "pluginevent.sock")

    @property
    def zds_socket(self) -> str:
        return str(self.root / "zds.sock")

    def start(self) -> AgentProcess:
        argv = [
            "nsenter", f"--net={self.node_netns}", "--", INMESH, "agent", "--node", "n1",
            "--store", str(self.root / "cluster.json"), "--run-dir", str(self.root / "run"),
            "--zds-socket", self.zds_socket, "--state-dir", str(self.root / "state"),
            "--backend", self.backend, "--drift-check-interval", "0.5",
        ]
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        wait_for(self.ready, 20, "agent readiness")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited: {(self.root / 'agent.log').read_text()}")
        try:
            return http_call(self.plugin_socket, "GET", "/readyz")[0] == 200
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        code, body = http_call(self.plugin_socket, "GET", "/status")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
