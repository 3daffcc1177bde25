"""One end of the ztunnel <-> worker channel: a SOCK_SEQPACKET unix socket on the event loop.

Each `send` is one record, with file descriptors beside it (SCM_RIGHTS); records are never
split or merged. Sending never blocks the loop: what the socket does not take at once is
queued, in order, and written when it becomes writable. `recv` returns the next record and the
fds that came with it (the caller owns them); b"" means the other end is gone.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import os
import socket

from inmesh.ztunnel.workerproto import MAX_MESSAGE

_MAX_FDS = 4


class Channel:
    """See the module docstring. ``sock`` is owned (closed by `close`)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        self._closed = False

    @classmethod
    def pair(cls) -> tuple[socket.socket, socket.socket]:
        """A connected pair of records sockets (one end per process)."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def send(self, record: bytes, fds: list[int] | None = None) -> None:
        """Queue ``record`` (and duplicates of ``fds``: the caller keeps its own). Silently
        dropped once closed: a dead peer is noticed by `recv`."""
        if self._closed:
            return
        self._queue.append((record, [os.dup(fd) for fd in fds or ()]))
        if len(self._queue) == 1:
            self._flush()

    def _flush(self) -> None:
        while self._queue:
            record, fds = self._queue[0]
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] \
                if fds else []
            try:
                self._sock.sendmsg([record], ancillary)
            except BlockingIOError:
                self._loop.add_writer(self._sock.fileno(), self._writable)
                return
            except OSError:  # the peer is gone; recv reports it
                self._drop_queue()
                return
            self._queue.popleft()
            for fd in fds:
                os.close(fd)

    def _writable(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        self._flush()

    async def recv(self) -> tuple[bytes, list[int]]:
        """The next record and its fds; (b"", []) at the peer's end."""
        while True:
            try:
                return self._recv_now()
            except BlockingIOError:
                pass
            readable: asyncio.Future[None] = self._loop.create_future()
            fd = self._sock.fileno()
            self._loop.add_reader(fd, _resolve, readable)
            try:
                await readable
            finally:
                self._loop.remove_reader(fd)

    def _recv_now(self) -> tuple[bytes, list[int]]:
        fds = array.array("i")
        try:
            data, ancdata, flags, _ = self._sock.recvmsg(
                MAX_MESSAGE + 1, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize))
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, BlockingIOError):
                raise
            return b"", []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            raise BlockingIOError  # a record we cannot read whole is dropped
        return data, list(fds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(self._sock.fileno())
        self._drop_queue()
        self._sock.close()

    def _drop_queue(self) -> None:
        for _, fds in self._queue:
            for fd in fds:
                os.close(fd)
        self._queue.clear()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
