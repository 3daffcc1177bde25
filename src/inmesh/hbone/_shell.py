"""The asyncio shell of one HBONE connection: TLS transport in, sans-io core, streams out.

`H2Shell` is the `asyncio.Protocol` under a TLS transport. It checks the peer's SPIFFE identity
before any HTTP/2 byte is processed, feeds received bytes and timer ticks to the core
(`inmesh.hbone.protocol`), writes what the core wants sent, and turns core events into the state
of `HboneStream` objects. Writers wait for flow-control credit and for the transport to drain
(`pause_writing`), so neither side buffers more than the windows allow.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar, cast

from h2.errors import ErrorCodes

from inmesh.errors import InmeshError
from inmesh.hbone import events as ev
from inmesh.hbone.errors import (
    ConnectRejected,
    HboneConnectionError,
    PeerIdentityError,
    StreamResetError,
)
from inmesh.hbone.headers import Header, Target
from inmesh.hbone.protocol import (
    ClientConnection,
    HboneConnection,
    ServerConnection,
    error_name,
)
from inmesh.hbone.stream import HboneStream
from inmesh.hbone.tls import ALPN_H2
from inmesh.identity import SpiffeId

log = logging.getLogger(__name__)

Verify = Callable[[ssl.SSLObject], SpiffeId]
Core = TypeVar("Core", bound=HboneConnection)


READ_BUFFER = 256 << 10
"""Bytes the TLS layer may decrypt into the shell's buffer per read."""


class H2Shell(asyncio.BufferedProtocol, Generic[Core]):
    """Drives one HBONE core over a TLS transport; see the module docstring."""

    def __init__(self, core: Core, verify: Verify, label: str,
                 on_connect: Callable[[HboneStream], None] | None = None) -> None:
        self.core = core
        self.label = label
        self.identity: SpiffeId | None = None
        self.failure: InmeshError | None = None
        """Why the connection could not be used (identity, ALPN) or broke."""
        self.paused = False
        self.max_write = core.settings.max_frame_size
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._verify = verify
        self._on_connect = on_connect
        self._streams: dict[int, HboneStream] = {}
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._deadline_seen = -1  # `core.deadline_changes` when the timer was last set
        self._close_guard: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._applying = 0  # inside `_handle`
        self._read_view = memoryview(bytearray(READ_BUFFER))
        self._acked_in_batch: list[int] = []

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport has the Transport API without being a subclass.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        try:
            self.identity = self._check_peer(transport.get_extra_info("ssl_object"))
        except InmeshError as exc:
            log.info("HBONE %s: refused: %s", self.label, exc)
            self.failure = exc
            transport.abort()
            return
        high = self.core.settings.write_buffer
        transport.set_write_buffer_limits(high=high, low=high // 4)
        self._flush()
        self._schedule()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        # The TLS layer decrypted into our buffer (no allocation and join per read): tunnel
        # bytes are lent to the streams as views of it (a sink writes them out, a queue copies
        # them) until the next read.
        if self.identity is not None:
            self._handle(self.core.receive(self._read_view[:nbytes], borrowed=True))

    def data_received(self, data: bytes) -> None:
        """Bytes fed directly (tests; transports that do not lend a buffer)."""
        if self.identity is not None:
            self._handle(self.core.receive(data))

    def eof_received(self) -> bool | None:
        return None  # HTTP/2 has no half-closed connection: close it

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for stream in list(self._streams.values()):
            stream.wake_writer()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._timer, self._close_guard):
            if handle is not None:
                handle.cancel()
        if not self.core.ended:
            self._handle(self.core.close(f"connection lost: {exc}" if exc
                                         else "connection closed by peer"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- used by streams, the pool and the server ------------------------------------------

    def open_stream(self, authority: Target | str, headers: Iterable[Header]) -> HboneStream:
        """Client: send a CONNECT; the status arrives on the stream's ``answer``."""
        assert isinstance(self.core, ClientConnection)
        stream = HboneStream(self, self.core.open_stream(authority, headers))
        self._streams[stream.stream_id] = stream
        self._flush()
        return stream

    async def connect(self, authority: Target | str, headers: Iterable[Header]) -> HboneStream:
        """Client: open a stream and wait for 200; `ConnectRejected` for any other status."""
        stream = self.open_stream(authority, headers)
        try:
            status = await stream.wait_answer()
        except asyncio.CancelledError:
            stream.reset(ErrorCodes.CANCEL)
            raise
        except StreamResetError as exc:
            raise HboneConnectionError(f"CONNECT {authority}: {exc}") from exc
        if status != 200:
            raise ConnectRejected(f"CONNECT {authority} (HBONE {self.label}): HTTP {status}",
                                  status)
        return stream

    def accept(self, stream: HboneStream) -> None:
        """Server: answer 200."""
        assert isinstance(self.core, ServerConnection)
        self.core.accept(stream.stream_id)
        self._flush()

    def refuse(self, stream: HboneStream, status: int) -> None:
        """Server: answer ``status`` and end the stream."""
        assert isinstance(self.core, ServerConnection)
        self.core.refuse(stream.stream_id, status)
        self._forget(stream.stream_id)
        self._flush()

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        taken = self.core.send(stream_id, data)
        self._flush()
        return taken

    def end_stream(self, stream_id: int) -> None:
        self.core.end_stream(stream_id)
        self._settle(stream_id)

    def acknowledge(self, stream_id: int, size: int) -> None:
        finished = self.core.acknowledge(stream_id, size)
        if self._applying:
            # Delivered while its own batch of events is being applied (a stream's sink): the
            # batch flushes when it is done; a stream that finished here may still have a
            # PeerEnded in the batch, so it is forgotten after the batch.
            if finished:
                self._acked_in_batch.append(stream_id)
            return
        # Usually h2 only counts the credit (WINDOW_UPDATE comes at half a window) and the
        # stream stays: nothing to send.
        if finished or self.core.has_output:
            self._settle(stream_id)

    def reset(self, stream_id: int, error_code: int) -> None:
        self.core.reset(stream_id, error_code)
        self._forget(stream_id)
        self._flush()

    def close(self, reason: str = "closed locally") -> None:
        """GOAWAY, then close the transport once it has flushed."""
        self._handle(self.core.close(reason))

    def drain(self) -> None:
        """Graceful GOAWAY: the peer opens no more streams here, those that exist finish,
        then the connection closes (at once if none is left)."""
        self.core.drain()
        self._flush()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.core.drained:
            log.debug("HBONE %s: drained", self.label)
            self.close("drained")

    def abort(self) -> None:
        """Drop the connection at once (the drain deadline passed)."""
        if self._transport is not None:
            self._transport.abort()

    # -- internals -------------------------------------------------------------------------

    def _check_peer(self, ssl_object: ssl.SSLObject | None) -> SpiffeId:
        if ssl_object is None:
            raise HboneConnectionError("transport is not TLS")
        alpn = ssl_object.selected_alpn_protocol()
        if alpn != ALPN_H2:
            raise PeerIdentityError(f"HBONE peer did not negotiate ALPN h2 (got {alpn!r})")
        return self._verify(ssl_object)

    def _settle(self, stream_id: int) -> None:
        """Drop a stream the core has finished with, then send what is pending. Once the
        connection has ended the core knows no stream: they are failed (`_on_ended`), not
        dropped, or a stream whose END_STREAM came with the GOAWAY would look alive."""
        if not self.core.has_stream(stream_id) and not self.core.ended:
            self._forget(stream_id)
        self._flush()

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        if self.core.going_away:  # the last stream of a draining connection closes it
            self._loop.call_soon(self._close_if_drained)

    def _handle(self, events: Iterable[ev.Event]) -> None:
        self._applying += 1
        streams = self._streams
        try:
            for event in events:
                if type(event) is ev.DataArrived:  # the usual event, handled here at once
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.received(event.data)
                else:
                    self._apply(event)
        finally:
            self._applying -= 1
        if not self._applying and self._acked_in_batch:
            acked, self._acked_in_batch = self._acked_in_batch, []
            for stream_id in acked:
                if not self.core.has_stream(stream_id) and not self.core.ended:
                    self._forget(stream_id)
        self._flush()
        if self.core.deadline_changes != self._deadline_seen:  # a PING ACK, a tick, the end
            self._schedule()
        if self.core.going_away and not self._applying:  # the peer's GOAWAY, maybe no stream
            self._close_if_drained()

    def _apply(self, event: ev.Event) -> None:
        """Every event but `DataArrived`, which `_handle` gives its stream itself."""
        stream = self._streams.get(getattr(event, "stream_id", None) or 0)
        if isinstance(event, ev.PeerEnded) and stream is not None:
            stream.ended_by_peer()
            self._settle(event.stream_id)
        elif isinstance(event, ev.WindowGrew):
            targets = [stream] if stream is not None else list(self._streams.values())
            for s in targets:
                s.wake_writer()
        elif isinstance(event, ev.ConnectAnswered) and stream is not None:
            stream.answered(event.status)
            if event.status != 200:
                self._forget(event.stream_id)
        elif isinstance(event, ev.StreamReset) and stream is not None:
            self._forget(event.stream_id)
            who = "peer" if event.by_peer else "us (protocol violation)"
            stream.fail(StreamResetError(
                f"stream {event.stream_id} reset by {who} ({error_name(event.error_code)})",
                event.error_code, event.by_peer))
        elif isinstance(event, ev.ConnectReceived):
            stream = HboneStream(self, event.stream_id, event.head)
            self._streams[event.stream_id] = stream
            if self._on_connect is not None:
                self._on_connect(stream)
        elif isinstance(event, ev.ConnectRefused):
            log.info("HBONE %s: stream %d refused with %d: %s", self.label, event.stream_id,
                     event.status, event.reason)
        elif isinstance(event, ev.ConnectionEnded):
            self._on_ended(event)

    def _on_ended(self, event: ev.ConnectionEnded) -> None:
        log.debug("HBONE %s: connection ended: %s", self.label, event.reason)
        if self.failure is None:
            self.failure = HboneConnectionError(f"HBONE {self.label}: {event.reason}")
        self._fail_streams(f"HBONE {self.label}: {event.reason}")

    def _fail_streams(self, reason: str) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.fail(StreamResetError(reason, ErrorCodes.CONNECT_ERROR, by_peer=True))

    def _flush(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        chunks = self.core.chunks_to_send()
        if len(chunks) == 1:
            transport.write(chunks[0])
        elif chunks:
            transport.writelines(chunks)
        if self.core.ended:
            transport.close()
            # A peer that stops reading would hold the TLS close forever.
            self._close_guard = self._loop.call_later(
                self.core.settings.handshake_timeout, transport.abort)

    def _schedule(self) -> None:
        """Move the timer to the core's next deadline. Only receiving, a timer tick and a
        close change that deadline (`HboneConnection.next_deadline`), so sends,
        acknowledgements and stream changes do not come here, and received data only when
        the core counted a change."""
        self._deadline_seen = self.core.deadline_changes
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self._handle(self.core.handle_timer(self._loop.time()))
