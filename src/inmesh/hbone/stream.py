"""`HboneStream`: one tunnel (a CONNECT stream) as an async byte pipe for a relay.

The stream holds what arrived until it is read, and the peer's credit for it until the reader
says the bytes were delivered (`acknowledge`). It talks to its connection through `Carrier`
(the connection shell), which also drives it: data, END_STREAM, window growth, reset.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Protocol

from h2.errors import ErrorCodes

from inmesh.errors import InmeshError
from inmesh.hbone.errors import StreamResetError
from inmesh.hbone.headers import ConnectHead
from inmesh.hbone.protocol import error_name
from inmesh.identity import SpiffeId


class Carrier(Protocol):
    """What a stream needs from its connection."""

    identity: SpiffeId | None
    paused: bool
    """The transport's buffer is full: writers wait for `HboneStream.wake_writer`."""
    max_write: int

    def send(self, stream_id: int, data: bytes | memoryview) -> int: ...
    def end_stream(self, stream_id: int) -> None: ...
    def acknowledge(self, stream_id: int, size: int) -> None: ...
    def reset(self, stream_id: int, error_code: int) -> None: ...


class HboneStream:
    """One tunnel: a CONNECT stream as a byte pipe with half-close, reset and backpressure.

    `read` returns b"" at the peer's END_STREAM and raises `StreamResetError` once the stream is
    reset (by either side) or its connection dies. Received bytes hold the peer's flow-control
    credit until `acknowledge` says they were delivered. `write` returns once all bytes were
    handed to the connection, waiting for credit meanwhile. One reader and one writer at a time.
    """

    def __init__(self, shell: Carrier, stream_id: int, head: ConnectHead | None = None) -> None:
        self.stream_id = stream_id
        self.head = head
        """Server side: the validated CONNECT head (target and headers)."""
        self._shell = shell
        self._chunks: collections.deque[bytes | memoryview] = collections.deque()
        self._eof = False
        self._write_closed = False
        self.error: StreamResetError | None = None
        """Why the stream broke, once it did."""
        # The reader's and the writer's wake-up, while one waits (a bare future per wait is
        # cheaper than an `asyncio.Event`; like ``Event.clear`` + ``wait``, a wake-up before
        # the wait is not remembered: both loops re-check the state first).
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        # Client side: the CONNECT's status, or the exception that prevented one.
        self._answer: asyncio.Future[int] = self._loop.create_future()
        self._sink: Callable[[bytes | memoryview], int] | None = None

    def set_sink(self, sink: Callable[[bytes | memoryview], int] | None) -> None:
        """Deliver arriving bytes through ``sink`` while the reader waits in `read` with
        nothing queued: ``sink(data)`` writes without blocking and returns what it wrote (0
        on any error), which the stream then acknowledges; the rest is queued for `read` as
        usual. This saves the reader a wake-up per message; order and backpressure are
        unchanged."""
        self._sink = sink

    @property
    def peer_identity(self) -> SpiffeId:
        """The verified SPIFFE ID at the other end of the connection."""
        assert self._shell.identity is not None  # streams exist only after verification
        return self._shell.identity

    async def read(self) -> bytes | memoryview:
        """The next received chunk (a view of received bytes after a partial sink write);
        b"" at END_STREAM. Call `acknowledge` once delivered."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self._eof:
                return b""
            self._reader = self._loop.create_future()
            await self._reader
        if self.error is not None:
            raise self.error
        return self._chunks.popleft()

    def acknowledge(self, size: int) -> None:
        """``size`` bytes from `read` reached their destination: return the peer's credit."""
        if self.error is None:
            self._shell.acknowledge(self.stream_id, size)

    async def write(self, data: bytes | memoryview) -> None:
        """Send ``data``, waiting for flow-control credit and transport room as needed."""
        view = memoryview(data)
        while view:
            self._check_writable()
            if self._shell.paused:
                await self._wait_writable()
                continue
            taken = self._shell.send(self.stream_id, view[: self._shell.max_write])
            view = view[taken:]
            if view and not taken:
                await self._wait_writable()

    def writable_now(self) -> bool:
        """Whether `send_now` could take something (no error, not closed, transport room)."""
        return self.error is None and not self._write_closed and not self._shell.paused

    def send_now(self, data: bytes) -> int:
        """Send what the windows and the transport take of ``data`` right now, without
        waiting; return how much (the caller keeps the rest for `write`). Never raises: a
        broken stream takes nothing, and `write` reports why."""
        shell = self._shell
        try:
            if len(data) <= shell.max_write and self.error is None and not shell.paused \
                    and not self._write_closed:  # the usual case: one frame
                return shell.send(self.stream_id, data)
        except InmeshError:
            return 0
        total = 0
        try:
            while total < len(data) and self.writable_now():
                part = data if total == 0 and len(data) <= self._shell.max_write \
                    else memoryview(data)[total:total + self._shell.max_write]
                taken = self._shell.send(self.stream_id, part)
                if not taken:
                    break
                total += taken
        except InmeshError:
            pass
        return total

    def close_write(self) -> None:
        """Half-close (END_STREAM). Ignored once the stream broke or was already closed."""
        if self.error is None and not self._write_closed:
            self._write_closed = True
            self._shell.end_stream(self.stream_id)

    def reset(self, error_code: int = ErrorCodes.CONNECT_ERROR, reason: str = "") -> None:
        """Abort the tunnel (RST_STREAM; CONNECT_ERROR mirrors a TCP reset, RFC 9113 8.5).
        ``reason`` is kept in `error` for logs."""
        if self.error is None:
            self._shell.reset(self.stream_id, error_code)
            self.fail(StreamResetError(
                f"stream {self.stream_id} reset locally ({error_name(error_code)})"
                + (f": {reason}" if reason else ""), error_code, by_peer=False))

    # -- driven by the shell ---------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.error is not None:
            raise self.error
        if self._write_closed:
            raise StreamResetError(f"stream {self.stream_id}: write after close_write",
                                   ErrorCodes.STREAM_CLOSED, by_peer=False)

    async def _wait_writable(self) -> None:
        self._writer = self._loop.create_future()
        await self._writer

    def _wake_reader(self) -> None:
        waiter, self._reader = self._reader, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_answer(self) -> int:
        """Client: the status the server answered the CONNECT with."""
        return await self._answer

    def answered(self, status: int) -> None:
        if not self._answer.done():
            self._answer.set_result(status)

    def received(self, data: bytes | memoryview) -> None:
        """Bytes from the peer. A memoryview is only lent for this call: what is kept is
        copied. A bytes object never changes, so the rest of a partial write is a view."""
        if self._sink is not None and self._reader is not None and not self._chunks:
            sent = self._sink(data)
            if sent and self.error is None:
                self._shell.acknowledge(self.stream_id, sent)
            if sent == len(data):
                return
            data = data[sent:] if type(data) is memoryview else memoryview(data)[sent:]
        if type(data) is memoryview and type(data.obj) is not bytes:
            data = data.tobytes()
        self._chunks.append(data)
        self._wake_reader()

    def ended_by_peer(self) -> None:
        self._eof = True
        self._wake_reader()

    def wake_writer(self) -> None:
        waiter, self._writer = self._writer, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: StreamResetError) -> None:
        if self.error is None:
            self.error = error
            self._chunks.clear()  # a reset voids undelivered data, as TCP RST does
        if not self._answer.done():
            self._answer.set_exception(error)
            self._answer.exception()  # retrieved: nobody may be waiting for it
        self._wake_reader()
        self.wake_writer()
