"""Shared test helpers for the ZDS tests: event-loop runner, netns fds, a recording handler."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from inmesh.errors import InmeshError
from inmesh.netns import NetnsId, netns_id_of_fd
from inmesh.zds.client import WorkloadHandler, ZdsClient, ZdsClientSettings
from inmesh.zds.messages import WorkloadInfo
from inmesh.zds.server import SnapshotEntry, ZdsServer, ZdsServerSettings

T = TypeVar("T")

TEST_TIMEOUT = 10.0
"""Upper bound for one async test; a hang fails instead of blocking the suite."""

INFO = WorkloadInfo("web-1", "default", "web")

FAST_CLIENT = ZdsClientSettings(initial_backoff=0.005, max_backoff=0.05)
"""Reconnect quickly so that tests wait milliseconds, not seconds."""

SHORT = ZdsServerSettings(ack_timeout=0.3, write_timeout=0.3, keepalive_interval=0.1, queue_size=4)
"""Small server bounds for tests that provoke timeouts."""

DEFAULT_SERVER = ZdsServerSettings()

GOLDEN_HELLO = b"\x08\x01"
GOLDEN_OK = b"\x0a\x00"
GOLDEN_SNAPSHOT_SENT = b"\x1a\x00"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async test body on a fresh event loop with a global deadline."""

    async def bounded() -> T:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await coro

    return asyncio.run(bounded())


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `predicate` until it holds, failing after `within` seconds (a deadline, not a sleep
    that hopes the condition holds afterwards)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (the conditions polled here have no event)
            await asyncio.sleep(0.002)


@contextmanager
def netns_fd() -> Iterator[int]:
    """A real netns fd (our own namespace), readable without privileges."""
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def own_netns() -> NetnsId:
    with netns_fd() as fd:
        return netns_id_of_fd(fd)


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def open_fds() -> set[int]:
    """The process's open fds, after a GC pass (other tests' garbage may close fds any time).

    Leak checks compare with ``<=``: nothing new may be open; fds closed meanwhile by others'
    garbage are not ours to explain."""
    gc.collect()
    return {int(name) for name in os.listdir("/proc/self/fd")}


class RecordingHandler:
    """A WorkloadHandler that records every call in order and can fail or hang on request."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.proxies: dict[str, NetnsId] = {}
        self.fail: dict[str, str] = {}
        self.hang: set[str] = set()
        self.connected = False
        self.changes: list[bool] = []
        self._released = asyncio.Event()

    async def add_workload(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        try:
            self.calls.append(("add", uid, info, netns_id_of_fd(netns_fd)))
            if uid in self.hang:
                await self._released.wait()
            if uid in self.fail:
                raise InmeshError(self.fail[uid])
            self.proxies[uid] = netns_id_of_fd(netns_fd)
        finally:
            os.close(netns_fd)

    async def del_workload(self, uid: str) -> None:
        self.calls.append(("del", uid))
        if uid in self.fail:
            raise InmeshError(self.fail[uid])
        self.proxies.pop(uid, None)

    async def snapshot_done(self, keep: frozenset[str]) -> None:
        self.calls.append(("snapshot_done", keep))
        for uid in set(self.proxies) - keep:
            del self.proxies[uid]

    def connection_changed(self, connected: bool) -> None:
        self.connected = connected
        self.changes.append(connected)

    def release(self) -> None:
        self._released.set()

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)


@asynccontextmanager
async def serving(
    path: str,
    snapshot: Callable[[], Sequence[SnapshotEntry]] = list,
    settings: ZdsServerSettings = DEFAULT_SERVER,
) -> AsyncIterator[ZdsServer]:
    server = ZdsServer(path, snapshot, settings)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@asynccontextmanager
async def client_running(
    path: str, handler: WorkloadHandler, settings: ZdsClientSettings = FAST_CLIENT
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ZdsClient(path, handler, settings).run(), name="test-zds-client")
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled(), "ZdsClient.run must only end by cancellation"


class RawPeer:
    """An independent ZDS peer: blocking socket calls and hand-built bytes, no inmesh code.

    Call its methods through `asyncio.to_thread` so that the loop under test keeps running."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(5.0)
        self.sock = sock

    @classmethod
    def connect(cls, path: str) -> RawPeer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(path)
        return cls(sock)

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.send(data)

    def recv(self) -> tuple[bytes, list[int]]:
        """One record and its fds (the caller closes them); b"" means EOF."""
        data, fds, flags, _ = socket.recv_fds(self.sock, 4096, 4)
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        return data, fds

    def recv_no_fds(self) -> bytes:
        data, fds = self.recv()
        assert fds == []
        return data

    def close(self) -> None:
        self.sock.close()


class RawAgent:
    """A listening socket that accepts ztunnels with plain blocking calls."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.settimeout(5.0)

    def accept(self) -> RawPeer:
        sock, _ = self.listener.accept()
        return RawPeer(sock)

    def close(self) -> None:
        self.listener.close()


def field(tag: int, payload: bytes) -> bytes:
    """Hand-built length-delimited protobuf field (short payloads: one-byte length)."""
    assert len(payload) < 128
    return bytes([tag, len(payload)]) + payload


def hand_add(uid: str, name: str, namespace: str, sa: str) -> bytes:
    """An Add built byte by byte from reference 5.2, independent of the protobuf library."""
    info = field(0x0A, name.encode()) + field(0x12, namespace.encode()) + field(0x1A, sa.encode())
    return field(0x0A, field(0x0A, uid.encode()) + field(0x12, info))


def hand_add_info(uid: str, info: WorkloadInfo) -> bytes:
    return hand_add(uid, info.name, info.namespace, info.service_account)


def hand_keep(uid: str) -> bytes:
    return field(0x2A, field(0x0A, uid.encode()))


def hand_del(uid: str) -> bytes:
    return field(0x12, field(0x12, uid.encode()))


def hand_ack(error: str = "") -> bytes:
    return field(0x0A, field(0x0A, error.encode()) if error else b"")
