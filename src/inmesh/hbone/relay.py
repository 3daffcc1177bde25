"""Pump one plain TCP socket to and from one HBONE stream: the tunnel's hot path.

Contract: `relay_socket_stream(sock, stream)` owns both, moves bytes both ways until both
directions ended, closes the socket and returns the byte counts. TCP EOF becomes END_STREAM
and END_STREAM becomes ``shutdown(SHUT_WR)``; a TCP reset (or any socket error) becomes
RST_STREAM(CONNECT_ERROR) and a stream reset (or a dead connection) becomes a TCP reset
(``SO_LINGER`` 0), as RFC 9113 8.5 asks of CONNECT proxies. Cancellation resets both; a
task cancelled before it first ran never took ownership, so its caller still owns both.

Backpressure: a chunk is acknowledged to the peer only after ``sock_sendall`` put it in the
socket's send buffer, so a slow application closes the peer's window; the other way round,
`HboneStream.write` waits for credit, so the socket is not read while the peer is full.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import NamedTuple

from h2.errors import ErrorCodes

from inmesh.hbone._sockets import reset_close
from inmesh.hbone.errors import StreamResetError
from inmesh.hbone.settings import HboneSettings
from inmesh.hbone.stream import HboneStream

DEFAULT_CHUNK = HboneSettings().relay_chunk
_FIRST_READ = 16 << 10


class RelayCounts(NamedTuple):
    """Bytes delivered each way; how the stream ended is in ``stream.error`` (None: cleanly)."""

    to_stream: int
    """Read from the socket and written to the stream ("up" for a client's app socket)."""
    from_stream: int
    """Read from the stream and written to the socket."""


class _SocketBroke(Exception):
    """The plain socket failed (reset, timeout); the stream must be reset in turn."""


class _Readable:
    """Read readiness of one socket without re-registering it for every read.

    ``loop.sock_recv`` registers the socket with the event loop and removes it again for
    every call (two epoll_ctl calls and a poll handle per message on uvloop). Here the
    registration stays while the reader keeps waiting; it is dropped only when the socket
    turns readable while nobody waits (the loop would otherwise call back on every turn).
    While the reader waits, ``handle`` gets the first go at each readiness: True means it
    dealt with it and the reader sleeps on."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int,
                 handle: Callable[[], bool]) -> None:
        self._loop, self._fd, self._handle = loop, fd, handle
        self._waiter: asyncio.Future[None] | None = None
        self._registered = False

    async def wait(self) -> None:
        self._waiter = self._loop.create_future()
        if not self._registered:
            self._loop.add_reader(self._fd, self._ready)
            self._registered = True
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _ready(self) -> None:
        if self._waiter is None:
            self.close()
        elif not self._waiter.done() and not self._handle():
            self._waiter.set_result(None)

    def close(self) -> None:
        if self._registered:
            self._loop.remove_reader(self._fd)
            self._registered = False


class _Pump:
    def __init__(self, sock: socket.socket, stream: HboneStream, chunk: int) -> None:
        self.sock, self.stream, self.chunk = sock, stream, chunk
        self.up = self.down = 0
        self.loop = asyncio.get_running_loop()
        # Reads start small and grow while they come back full: a read allocates its whole
        # size, and big reads would cost small messages for nothing.
        self._size = min(_FIRST_READ, chunk)
        self._pending: memoryview | None = None  # read by `_read_now`, not taken by the stream
        self._read_error: OSError | None = None  # ... or what its read raised

    def _sized(self, got: int) -> None:
        if got == self._size:
            self._size = min(self._size * 4, self.chunk)
        elif got < _FIRST_READ:
            self._size = min(_FIRST_READ, self.chunk)

    def _read_now(self) -> bool:
        """From the readiness callback, while `sock_to_stream` waits: move what the socket
        has into the stream if the stream takes it at once (no task wake-up). False hands
        the rest (the untaken bytes, EOF, an error) back to `sock_to_stream`; a stream that
        cannot take anything (paused, broken) takes nothing, and the task, which would have
        read the same bytes, waits with them or reports why."""
        try:
            data = self.sock.recv(self._size)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self._read_error = exc  # reported once by the kernel: keep it for the task
            return False
        if not data:
            return False  # EOF stays: the task's own read sees it
        if len(data) == self._size or self._size != _FIRST_READ:  # else `_sized` is a no-op
            self._sized(len(data))
        taken = self.stream.send_now(data)
        self.up += taken
        if taken < len(data):
            self._pending = memoryview(data)[taken:]  # bytes never change: no copy
            return False
        return True

    async def sock_to_stream(self) -> None:
        readable = _Readable(self.loop, self.sock.fileno(), self._read_now)
        try:
            while True:
                if self._pending is not None:
                    rest, self._pending = self._pending, None
                    await self.stream.write(rest)
                    self.up += len(rest)
                    continue
                try:
                    if self._read_error is not None:
                        raise self._read_error
                    data = self.sock.recv(self._size)
                except (BlockingIOError, InterruptedError):
                    await readable.wait()
                    continue
                except OSError as exc:
                    raise _SocketBroke(f"reading the socket: {exc.strerror or exc}") from exc
                if not data:
                    self.stream.close_write()
                    return
                self._sized(len(data))
                await self.stream.write(data)
                self.up += len(data)
        finally:
            readable.close()

    def deliver_now(self, data: bytes | memoryview) -> int:
        """The stream's sink (`HboneStream.set_sink`): what the socket takes at once is
        delivered here (the stream acknowledges it); an error leaves the bytes to
        `stream_to_sock`, whose own write then reports it."""
        try:
            sent = self.sock.send(data)
        except OSError:
            return 0
        self.down += sent
        return sent

    async def stream_to_sock(self) -> None:
        while data := await self.stream.read():
            try:
                await self.loop.sock_sendall(self.sock, data)
            except OSError as exc:
                raise _SocketBroke(f"writing the socket: {exc.strerror or exc}") from exc
            self.stream.acknowledge(len(data))
            self.down += len(data)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _SocketBroke(f"half-closing the socket: {exc.strerror or exc}") from exc


async def relay_socket_stream(sock: socket.socket, stream: HboneStream,
                              chunk: int = DEFAULT_CHUNK) -> RelayCounts:
    """Relay until both directions end; close ``sock``; see the module docstring."""
    sock.setblocking(False)
    pump = _Pump(sock, stream, chunk)
    tasks = [asyncio.create_task(pump.sock_to_stream()), asyncio.create_task(pump.stream_to_sock())]
    stream.set_sink(pump.deliver_now)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        stream.set_sink(None)
        await _stop(tasks)
        stream.reset(ErrorCodes.CANCEL, "relay cancelled")
        reset_close(sock)
        raise
    stream.set_sink(None)
    await _stop(tasks)
    failure = next((t.exception() for t in tasks if not t.cancelled() and t.exception()), None)
    if failure is None:
        sock.close()
    elif isinstance(failure, StreamResetError):
        reset_close(sock)
    elif isinstance(failure, _SocketBroke):
        stream.reset(ErrorCodes.CONNECT_ERROR, str(failure))
        reset_close(sock)
    else:
        stream.reset(ErrorCodes.INTERNAL_ERROR, f"relay failed: {failure!r}")
        reset_close(sock)
        raise failure
    return RelayCounts(pump.up, pump.down)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
