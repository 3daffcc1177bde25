"""HBONE connections, sans-io: HTTP/2 (the ``h2`` library) with one CONNECT stream per tunnel.

`ClientConnection` opens CONNECT streams; `ServerConnection` judges them (400 for anything but a
CONNECT to one of its pod IPs on a non-proxy port) and lets the shell answer 200 or 503. Both
take received bytes and the time, and return `events` for the shell and bytes to send. They
never touch a socket or a clock.

Flow control is the backpressure of the tunnel: credit for received data goes back to the peer
only when the shell reports those bytes delivered (`acknowledge`), so a slow application stops
its peer instead of filling our memory. A stream that ends or is reset gives back whatever it
still held, so the connection window never leaks. Stream errors stay on their stream; only
framing errors, GOAWAY and a missed PING end the connection (`ConnectionEnded`).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import h2.events as h2e
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import FrameDataMissingError, H2Error, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import DataFrame, Frame

from inmesh.errors import LocalProtocolError
from inmesh.hbone import events as ev
from inmesh.hbone.headers import BadConnect, Header, Target, connect_request, judge_connect
from inmesh.hbone.keepalive import Keepalive
from inmesh.hbone.settings import HboneSettings

_DEFAULT_CONNECTION_WINDOW = 65535
_FRAME_HEADER = struct.Struct(">HBBBL")  # RFC 9113 4.1: 24-bit length, type, flags, stream id
_DATA_TYPE, _END_STREAM_FLAG = 0x0, 0x1
ZERO_COPY_MIN = 16 << 10
"""DATA payloads of at least this many bytes go out by reference, not serialized into h2's
buffer: below it one concatenation is cheaper than an extra buffer (and TLS record)."""

Buffer = bytes | memoryview


def _data_frame_body_repr(frame: DataFrame) -> str:
    return f"<{len(frame.data)} bytes>"


# h2 formats ``repr(frame)`` for its trace log on every received frame, even with logging off,
# and hyperframe's DATA repr copies and hex-encodes the whole payload: a quarter of the CPU of
# a bulk transfer with 1 MiB frames. Only that repr changes; parsing and serializing do not.
DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]


class _FrameBuffer(FrameBuffer):
    """h2's inbound buffer, parsing DATA bodies in place: h2 slices every frame out of the
    buffer (a copy) before ``DataFrame.parse_body`` copies the payload out again. Other
    frames, and DATA in the middle of a header block (an error h2 reports), go the h2 way;
    errors are h2's."""

    def __next__(self) -> Frame:
        buf = self._data
        if len(buf) < 9 or buf[3] != _DATA_TYPE or self._headers_buffer:
            return super().__next__()
        try:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
        except (InvalidDataError, InvalidFrameError) as err:
            raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        if len(buf) < length + 9:
            raise StopIteration
        self._validate_frame_length(length)
        body = memoryview(buf)[9:9 + length]
        try:
            frame.parse_body(body)  # copies the payload out (``tobytes``)
        except InvalidDataError as err:
            raise ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise FrameDataMissingError("Frame data missing or invalid") from err
        finally:
            body.release()  # the buffer may be resized again
        del buf[:9 + length]
        return frame


class _H2Connection(H2Connection):
    """h2 with large DATA payloads passed through by reference.

    h2 serializes every frame into one bytearray: a DATA payload is copied four times on its
    way (``tobytes``, join, header concatenation, append) and once more by `data_to_send`.
    Here h2 still does all the state and flow-control bookkeeping of ``send_data``; only the
    serialization of unpadded DATA frames is replaced: a 9-byte header, then the payload
    appended (below `ZERO_COPY_MIN`) or itself kept, in order, in `chunks_to_send`.
    A payload is kept by reference until written: h2 turns memoryviews into bytes, and
    `HboneConnection.send` hands over nothing else, so no caller can change it meanwhile."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self._chunks: list[Buffer] = []
        self.incoming_buffer = _FrameBuffer(server=not config.client_side)

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if not frames:
            return
        out = self._data_to_send
        for frame in frames:
            if type(frame) is not DataFrame or "PADDED" in frame.flags:
                out += frame.serialize()
                continue
            payload = frame.data
            size = frame.body_len = len(payload)
            out += _FRAME_HEADER.pack(size >> 8, size & 0xFF, _DATA_TYPE,
                                      _END_STREAM_FLAG if "END_STREAM" in frame.flags else 0,
                                      frame.stream_id & 0x7FFFFFFF)
            if size < ZERO_COPY_MIN:
                out += payload
            else:
                self._chunks.append(bytes(out))
                out.clear()
                self._chunks.append(payload)
        assert all(f.body_len <= self.max_outbound_frame_size for f in frames)

    @property
    def has_output(self) -> bool:
        return bool(self._chunks or self._data_to_send)

    def chunks_to_send(self) -> list[Buffer]:
        """Everything pending, in order, as buffers to write one after the other."""
        chunks, self._chunks = self._chunks, []
        if self._data_to_send:
            chunks.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        return chunks

    def data_to_send(self, amount: int | None = None) -> bytes:
        if self._chunks:
            self._data_to_send[:0] = b"".join(self._chunks)
            self._chunks = []
        return super().data_to_send(amount)

    def clear_outbound_data_buffer(self) -> None:
        self._chunks = []
        super().clear_outbound_data_buffer()


@dataclass
class _Stream:
    """What HBONE tracks per stream on top of h2's own state machine."""

    unacked: int = 0  # bytes handed to the shell and not yet acknowledged
    local_ended: bool = False
    remote_ended: bool = False
    answered: bool = False  # client: a response head arrived

    @property
    def finished(self) -> bool:
        return self.local_ended and self.remote_ended and not self.unacked


class HboneConnection:
    """What clients and servers share: settings, data, half-close, reset, PING, teardown."""

    def __init__(self, settings: HboneSettings, now: float, client_side: bool,
                 idle_timeout: float | None = None) -> None:
        self.settings = settings
        self.ended = False
        self._streams: dict[int, _Stream] = {}
        self._keepalive = Keepalive(now, settings.ping_interval, settings.ping_timeout)
        self._idle_timeout = idle_timeout
        self._idle_since: float | None = now
        self._opened = self._opened_at_mark = 0  # streams ever opened; see `_idle_expired`
        self._h2 = _H2Connection(H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False))
        header_list = settings.client_max_header_list if client_side \
            else settings.server_max_header_list
        initial = {
            SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
            SettingCodes.MAX_CONCURRENT_STREAMS:
                settings.client_max_streams if client_side else settings.server_max_streams,
        }
        if client_side:
            initial[SettingCodes.ENABLE_PUSH] = 0
        self._h2.local_settings = Settings(client=client_side, initial_values=initial)
        # Values given as initial ones are in force at once; mirror them where h2 caches them.
        self._h2.max_inbound_frame_size = settings.max_frame_size
        self._h2.decoder.max_header_list_size = header_list
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(
            settings.connection_window - _DEFAULT_CONNECTION_WINDOW)

    # -- inputs --------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[ev.Event]:
        """Feed bytes from the peer; return what they meant. (Only `handle_timer` needs the
        time: liveness is judged by PING ACKs, not by traffic.)"""
        if self.ended:
            return []
        try:
            h2_events = self._h2.receive_data(data)
        except ProtocolError as exc:  # h2 already queued a GOAWAY with the right code
            code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
            return self._end(f"HTTP/2 protocol error from peer: {exc}", int(code), False)
        out: list[ev.Event] = []
        for event in h2_events:
            out.extend(self._dispatch(event))
            if self.ended:
                break
        return out

    def handle_timer(self, now: float) -> list[ev.Event]:
        """Run what is due at ``now`` (PING, PING timeout, idle close)."""
        if self.ended:
            return []
        if self._idle_expired(now):
            return self.close(f"idle for {self._idle_timeout:g} s")
        try:
            payload = self._keepalive.poll(now)
        except TimeoutError as exc:
            self._h2.close_connection(ErrorCodes.NO_ERROR)
            return self._end(f"peer is unresponsive: {exc}", ErrorCodes.NO_ERROR, False)
        if payload is not None:
            self._h2.ping(payload)
        return []

    def next_deadline(self) -> float | None:
        """When `handle_timer` must run next (None once ended)."""
        if self.ended:
            return None
        deadline = self._keepalive.next_deadline()
        if self._idle_timeout is not None and self._idle_since is not None:
            deadline = min(deadline, self._idle_since + self._idle_timeout)
        return deadline

    def data_to_send(self) -> bytes:
        """Everything pending, as one byte string."""
        return self._h2.data_to_send()

    @property
    def has_output(self) -> bool:
        """Whether `data_to_send` would return something."""
        return self._h2.has_output

    def chunks_to_send(self) -> list[Buffer]:
        """Everything pending, in order, without joining large DATA payloads (for
        ``transport.writelines``)."""
        return self._h2.chunks_to_send()

    # -- streams ---------------------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        """Streams not yet finished (open, half-closed, or holding undelivered data)."""
        return len(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Bytes `send` would accept on ``stream_id`` now (0 when blocked by flow control)."""
        stream = self._stream(stream_id)
        if stream.local_ended or self.ended:
            return 0
        return max(0, self._h2.local_flow_control_window(stream_id))

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Send as much of ``data`` as the windows allow, in frames of at most the peer's
        frame size; return how many bytes were taken."""
        view = memoryview(data)
        taken = min(len(view), self.send_window(stream_id))
        frame = self._h2.max_outbound_frame_size
        whole = view.obj if type(view.obj) is bytes else None
        for offset in range(0, taken, frame):
            part = view[offset:min(offset + frame, taken)]
            # h2 copies a memoryview (``tobytes``) and keeps bytes as they are: hand it the
            # immutable bytes object itself when the slice is all of it.
            self._h2.send_data(stream_id, whole if whole is not None
                               and part.nbytes == len(whole) else part)
        return taken

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (END_STREAM): the tunnel's TCP FIN."""
        stream = self._stream(stream_id)
        if stream.local_ended:
            return
        stream.local_ended = True
        if not self.ended:
            self._h2.end_stream(stream_id)
        self._maybe_forget(stream_id)

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abandon the stream: RST_STREAM to the peer (the tunnel's TCP RST), undelivered data
        dropped and its credit returned. Unknown or finished streams are ignored."""
        if stream_id not in self._streams:
            return
        if not self.ended:
            # Already closed at the HTTP/2 level: there is nothing to tell the peer.
            with contextlib.suppress(H2Error):
                self._h2.reset_stream(stream_id, error_code)
        self._forget(stream_id)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` bytes of ``stream_id`` reached the application: give the peer credit."""
        stream = self._streams.get(stream_id)
        if stream is None or size == 0:
            return  # reset meanwhile: its credit went back already
        if not 0 < size <= stream.unacked:
            raise LocalProtocolError(f"stream {stream_id}: acknowledged {size} bytes, "
                                     f"only {stream.unacked} were delivered")
        stream.unacked -= size
        if not self.ended:
            self._h2.acknowledge_received_data(size, stream_id)
        self._maybe_forget(stream_id)

    def close(self, reason: str = "closed locally") -> list[ev.Event]:
        """Send GOAWAY and end the connection; every stream is gone."""
        if self.ended:
            return []
        self._h2.close_connection(ErrorCodes.NO_ERROR)
        return self._end(reason, ErrorCodes.NO_ERROR, False)

    # -- internals -------------------------------------------------------------------------

    def _idle_expired(self, now: float) -> bool:
        """Whether the connection has had no stream for ``idle_timeout``. Idleness is sampled
        when the timer runs (at least every ping interval), so the close comes between
        ``idle_timeout`` and ``idle_timeout + ping_interval`` after the last stream ended."""
        if self._idle_timeout is None:
            return False
        if self._streams:
            self._idle_since = None
        elif self._idle_since is None or self._opened != self._opened_at_mark:
            self._idle_since = now
        self._opened_at_mark = self._opened
        return self._idle_since is not None and now >= self._idle_since + self._idle_timeout

    def _stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open on this HBONE connection")
        return stream

    def _maybe_forget(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.finished:
            del self._streams[stream_id]

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id)
        if stream.unacked and not self.ended:  # h2 returns connection credit for closed streams
            self._h2.acknowledge_received_data(stream.unacked, stream_id)

    def _end(self, reason: str, error_code: int, by_peer: bool) -> list[ev.Event]:
        self.ended = True
        self._streams.clear()
        return [ev.ConnectionEnded(reason, int(error_code), by_peer)]

    def _dispatch(self, event: h2e.Event) -> Iterable[ev.Event]:
        if isinstance(event, h2e.DataReceived):
            return self._on_data(event)
        if isinstance(event, h2e.StreamEnded):
            return self._on_stream_ended(event.stream_id)
        if isinstance(event, h2e.StreamReset):
            return self._on_stream_reset(event)
        if isinstance(event, h2e.WindowUpdated):
            return [ev.WindowGrew(event.stream_id or None)]
        if isinstance(event, h2e.RemoteSettingsChanged):
            return [ev.WindowGrew(None)]
        if isinstance(event, h2e.PingAckReceived):
            self._keepalive.acked(bytes(event.ping_data or b""))
            return []
        if isinstance(event, h2e.ConnectionTerminated):
            code = int(event.error_code or 0)
            detail = f": {event.additional_data!r}" if event.additional_data else ""
            return self._end(f"peer sent GOAWAY ({error_name(code)}{detail})", code, True)
        if isinstance(event, h2e.TrailersReceived) and event.stream_id in self._streams:
            return self._violation(event.stream_id)
        return self._on_headers(event)

    def _on_headers(self, event: h2e.Event) -> Iterable[ev.Event]:
        """Request or response heads; the subclasses know which they expect."""
        return []

    def _on_data(self, event: h2e.DataReceived) -> Iterable[ev.Event]:
        sid = event.stream_id or 0  # h2 always sets the id and data of a DATA event
        data, counted = bytes(event.data or b""), event.flow_controlled_length or 0
        stream = self._streams.get(sid)
        if stream is None or stream.remote_ended:  # a stream we dropped: discard, give credit
            self._h2.acknowledge_received_data(counted, sid)
            return []
        if counted > len(data):  # padding is never delivered, so it is credited at once
            self._h2.acknowledge_received_data(counted - len(data), sid)
        if not data:
            return []
        stream.unacked += len(data)
        return [ev.DataArrived(sid, data)]

    def _on_stream_ended(self, stream_id: int | None) -> Iterable[ev.Event]:
        stream = self._streams.get(stream_id or 0)
        if stream_id is None or stream is None:
            return []
        stream.remote_ended = True
        self._maybe_forget(stream_id)
        return [ev.PeerEnded(stream_id)]

    def _on_stream_reset(self, event: h2e.StreamReset) -> Iterable[ev.Event]:
        sid = event.stream_id
        if sid is None or sid not in self._streams:
            return []
        self._forget(sid)
        return [ev.StreamReset(sid, int(event.error_code or 0), bool(event.remote_reset))]

    def _violation(self, stream_id: int) -> list[ev.Event]:
        """A frame not allowed on a CONNECT stream (trailers, a second head): reset it."""
        self.reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
        return [ev.StreamReset(stream_id, ErrorCodes.PROTOCOL_ERROR, False)]


class ClientConnection(HboneConnection):
    """The dialing end: opens one CONNECT stream per tunnel."""

    def __init__(self, settings: HboneSettings, now: float) -> None:
        super().__init__(settings, now, client_side=True, idle_timeout=settings.idle_timeout)

    @property
    def capacity(self) -> int:
        """How many more streams may be opened now: our cap and the server's limit, minus
        the streams still in use."""
        if self.ended:
            return 0
        limit = min(self.settings.client_max_streams,
                    self._h2.remote_settings.max_concurrent_streams)
        return max(0, min(limit - self.stream_count,
                          limit - self._h2.open_outbound_streams))

    def open_stream(self, authority: Target | str, headers: Iterable[Header] = ()) -> int:
        """Send a CONNECT for ``authority``; the answer comes as `ConnectAnswered`."""
        if self.capacity <= 0:
            raise LocalProtocolError("HBONE connection has no stream capacity left")
        request = connect_request(authority, headers)
        stream_id = self._h2.get_next_available_stream_id()
        self._h2.send_headers(stream_id, request)
        self._streams[stream_id] = _Stream()
        self._opened += 1
        return stream_id

    def _on_headers(self, event: h2e.Event) -> Iterable[ev.Event]:
        if not isinstance(event, h2e.ResponseReceived) or event.stream_id is None:
            return []
        sid = event.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            return []
        if stream.answered:
            return self._violation(sid)
        stream.answered = True
        status = _status_of(event.headers or [])
        if status == 200:
            return [ev.ConnectAnswered(sid, 200)]
        self.reset(sid, ErrorCodes.CANCEL)
        return [ev.ConnectAnswered(sid, status)]


class ServerConnection(HboneConnection):
    """The listening end of one accepted connection to a pod with IPs ``local_ips``."""

    def __init__(self, settings: HboneSettings, now: float, local_ips: Collection[str]) -> None:
        super().__init__(settings, now, client_side=False)
        self.local_ips = frozenset(local_ips)

    def accept(self, stream_id: int) -> None:
        """The upstream is connected: answer 200, the tunnel is open."""
        self._stream(stream_id)
        if not self.ended:
            self._h2.send_headers(stream_id, [(":status", "200")])

    def refuse(self, stream_id: int, status: int) -> None:
        """Answer ``status`` and end the stream (503 when the upstream cannot be reached)."""
        self._stream(stream_id)
        self._answer_and_close(stream_id, status)

    def _on_headers(self, event: h2e.Event) -> Iterable[ev.Event]:
        if not isinstance(event, h2e.RequestReceived) or event.stream_id is None:
            return []
        sid = event.stream_id
        self._streams[sid] = _Stream()
        try:
            head = judge_connect(list(event.headers or []), self.local_ips)
        except BadConnect as exc:
            self._answer_and_close(sid, exc.status)
            return [ev.ConnectRefused(sid, exc.status, str(exc))]
        return [ev.ConnectReceived(sid, head)]

    def _answer_and_close(self, stream_id: int, status: int) -> None:
        """Complete response, then RST_STREAM(NO_ERROR) so the client stops sending
        (RFC 9113 8.1); the stream's credit comes back."""
        if not self.ended:
            self._h2.send_headers(stream_id, [(":status", str(status))], end_stream=True)
        self.reset(stream_id, ErrorCodes.NO_ERROR)


def error_name(code: int) -> str:
    """``CANCEL`` for 8 and so on; the number for codes HTTP/2 does not define."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code:#x}"


def _status_of(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The ``:status`` of a response head; 0 if missing or malformed (never 200)."""
    for name, value in headers:
        if bytes(name) == b":status":
            text = bytes(value)
            return int(text) if len(text) == 3 and text.isdigit() else 0
    return 0
