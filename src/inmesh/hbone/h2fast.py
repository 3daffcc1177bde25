"""h2 with a fast lane for tunnel DATA, sans-io.

A CONNECT tunnel is almost all DATA frames, and h2 spends more per DATA frame than the rest of
the relay together: two state machines, event objects, a frame object, and four copies of the
payload on the way out and two on the way in. `FastH2Connection` is h2's `H2Connection` with
the DATA frames of healthy streams taken off that path, in both directions:

- **Out** (`emit_data`): the caller checks the stream may send and the windows allow it (the
  window counters are h2's own, decremented here exactly as ``send_data`` does); the frame is a
  9-byte header and the payload, which goes out by reference when it is large and immutable.
- **In** (`receive_data`): frames are cut from the byte stream here. A DATA frame for a stream
  h2 has OPEN (or half-closed by us), unpadded, with no content-length to track, outside a
  header block, is charged to h2's connection and stream windows at its header (a peer
  overrunning a window is the same connection error h2 raises) and its body is handed on as it
  arrives, as `DataArrived` events, without waiting for the whole frame: a bulk transfer's TLS
  reads are passed through, often without a copy. Its END_STREAM reaches h2 as an empty DATA
  frame with the flag, so the stream state is h2's. Every other frame (and DATA that is not
  eligible) goes to h2 whole, through h2's own frame buffer and dispatch, so errors, GOAWAY
  codes and events are h2's.

A graceful GOAWAY (NO_ERROR) is kept from h2 in both directions (`GoingAway`, `queue_goaway`):
h2's state machine would close the whole connection at once (python-hyper/h2#1181), while
HTTP/2 lets the streams the GOAWAY covers finish. Everything else (HEADERS, SETTINGS,
WINDOW_UPDATE, RST_STREAM, PING, a GOAWAY with an error, flow-control credit back to the peer)
is h2 unchanged. Frames h2 queues and frames emitted here leave in the order
they were produced (`chunks_to_send`).
"""

from __future__ import annotations

import struct

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError
from h2.stream import H2Stream, StreamState
from h2.windows import WindowManager
from hyperframe.exceptions import InvalidDataError, InvalidFrameError, InvalidPaddingError
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, WindowUpdateFrame

from inmesh.hbone import events as ev

_FRAME_HEADER = struct.Struct(">HBBBL")  # RFC 9113 4.1: 24-bit length, type, flags, stream id
_HEADER_LEN = 9
_DATA_TYPE = 0x0
_END_STREAM, _PADDED = 0x1, 0x8
ZERO_COPY_MIN = 16 << 10
"""DATA payloads of at least this many bytes go out by reference, not copied into the output
buffer: below it one concatenation is cheaper than an extra buffer (and TLS record)."""

_OPEN_CONNECTION = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
_CAN_SEND = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_CAN_RECEIVE = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)

Buffer = bytes | bytearray | memoryview


def _data_frame_body_repr(frame: DataFrame) -> str:
    return f"<{len(frame.data)} bytes>"


# h2 formats ``repr(frame)`` for its trace log on every received frame, even with logging off,
# and hyperframe's DATA repr copies and hex-encodes the whole payload. Only that repr changes.
DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]


def _window_update(stream_id: int, increment: int) -> WindowUpdateFrame:
    frame = WindowUpdateFrame(stream_id)
    frame.window_increment = increment
    return frame


def _processed(window: WindowManager, size: int) -> int | None:
    """h2's ``WindowManager.process_bytes``, whose window algorithm runs only when it may
    grant an update: at half a window processed or a closed window (a superset of h2's own
    condition, which then decides). A tunnel's small acknowledgements almost never get there."""
    window._bytes_processed += size
    if window._bytes_processed >= window.max_window_size // 2 or not window.current_window_size:
        return window._maybe_update_window()
    return 0 if window._bytes_processed else None


class GoingAway:
    """The peer sent GOAWAY with NO_ERROR: it processes no stream above ``last_stream_id``
    (of those we opened) and opens none itself; the streams up to it may finish."""

    __slots__ = ("last_stream_id",)

    def __init__(self, last_stream_id: int) -> None:
        self.last_stream_id = last_stream_id


Received = Event | ev.DataArrived | GoingAway
"""What `FastH2Connection.receive_data` returns: h2's events, fast-lane data, a graceful GOAWAY."""


class FastH2Connection(H2Connection):
    """h2 with tunnel DATA on a fast lane; see the module docstring."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self._chunks: list[Buffer] = []
        # Receive side: the frame being cut from the byte stream.
        self._head = bytearray()  # a header not yet complete
        self._slow = bytearray()  # a whole frame for h2, while its body arrives
        self._body_left = 0  # body bytes of the current frame still to come
        self._fast_sid = 0  # the current frame's stream, when its body goes the fast lane
        self._fast_end = False  # ... and it carries END_STREAM
        self._borrowed = False  # bodies may be views into the caller's buffer

    # -- sending ---------------------------------------------------------------------------

    def sendable(self, stream_id: int) -> H2Stream | None:
        """The h2 stream if `emit_data` may send on it now (connection and stream open for
        sending); None if not, and then h2's ``send_data`` says why."""
        stream = self.streams.get(stream_id)
        if (stream is None or self.state_machine.state not in _OPEN_CONNECTION
                or stream.state_machine.state not in _CAN_SEND):
            return None
        return stream

    def emit_data(self, stream: H2Stream, payload: Buffer) -> None:
        """Queue one unpadded DATA frame. The caller checked `sendable`, the frame size and
        the windows (``min(outbound_flow_control_window, stream.outbound_flow_control_window)``);
        both windows are charged here. A payload whose memory may change later (anything but
        bytes or a view of bytes) is copied."""
        size = len(payload)
        self.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        if size < ZERO_COPY_MIN:  # `_queue_data`'s small case, inline: the usual message
            self._data_to_send += _FRAME_HEADER.pack(
                size >> 8, size & 0xFF, _DATA_TYPE, 0, stream.stream_id)
            self._data_to_send += payload
            return
        if type(payload) is not bytes and not (
                type(payload) is memoryview and type(payload.obj) is bytes):
            payload = bytes(payload)
        self._queue_data(stream.stream_id, 0, payload)

    def _queue_data(self, stream_id: int, flags: int, payload: Buffer) -> None:
        """A DATA frame's header, then its payload: appended when small, kept by reference
        (in order, after what was queued before it) when large."""
        size = len(payload)
        out = self._data_to_send
        out += _FRAME_HEADER.pack(size >> 8, size & 0xFF, _DATA_TYPE, flags, stream_id)
        if size < ZERO_COPY_MIN:
            out += payload
            return
        self._chunks.append(bytes(out))
        out.clear()
        self._chunks.append(payload)

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """h2's, for every delivered chunk, without its per-call debug logging and lookups:
        the same window bookkeeping, and WINDOW_UPDATE frames only when h2 would send them.
        An unknown or closed stream only gets the connection's credit back, as in h2."""
        if stream_id <= 0 or acknowledged_size < 0:
            raise ValueError(f"cannot acknowledge {acknowledged_size} bytes on stream {stream_id}")
        frames: list[Frame] = []
        increment = _processed(self._inbound_flow_control_window_manager, acknowledged_size)
        if increment:
            frames.append(_window_update(0, increment))
        stream = self.streams.get(stream_id)
        if stream is not None and stream.open:
            increment = _processed(stream._inbound_window_manager, acknowledged_size)
            if increment:
                frames.append(_window_update(stream_id, increment))
        if frames:
            self._prepare_for_sending(frames)

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        # Frames h2 builds itself, DATA included (END_STREAM, padded, the slow lane), are
        # serialized the stock way; big payloads by reference as in `emit_data`.
        for frame in frames:
            if type(frame) is not DataFrame or "PADDED" in frame.flags:
                self._data_to_send += frame.serialize()
                continue
            frame.body_len = len(frame.data)
            self._queue_data(frame.stream_id & 0x7FFFFFFF,
                             _END_STREAM if "END_STREAM" in frame.flags else 0, frame.data)

    def queue_goaway(self, last_stream_id: int) -> None:
        """Send GOAWAY (NO_ERROR, ``last_stream_id``) without h2's state change: the
        connection stays open for the streams that exist (h2's ``close_connection`` would end
        it). Closing it later with ``close_connection`` sends the final GOAWAY."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        self._prepare_for_sending([frame])

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

    # -- receiving -------------------------------------------------------------------------

    def receive_data(  # type: ignore[override]
            self, data: Buffer, borrowed: bool = False) -> list[Received]:
        """h2's ``receive_data``, with eligible DATA bodies returned as `ev.DataArrived` (not
        yet counted as delivered: the caller acknowledges them) and a graceful GOAWAY as
        `GoingAway` among h2's events. With
        ``borrowed``, bodies are views into ``data`` (no copy): the caller must be done with
        them, or copy them, before it reuses its buffer."""
        events: list[Received] = []
        self.incoming_buffer.max_frame_size = self.max_inbound_frame_size
        self._borrowed = borrowed
        try:
            self._cut(memoryview(data), data, events)
        except InvalidPaddingError as exc:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise ProtocolError("Received frame with invalid padding.") from exc
        except ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        return events

    def _cut(self, view: memoryview, data: Buffer,
             events: list[Received]) -> None:
        buffer = self.incoming_buffer
        if buffer._preamble_len:  # server: h2 checks the client preface
            taken = min(buffer._preamble_len, len(view))
            buffer.add_data(view[:taken])
            view = view[taken:]
        whole_data = data if type(data) is bytes and len(data) == len(view) else None
        pos, end = 0, len(view)
        while True:
            if self._body_left:
                take = min(self._body_left, end - pos)
                if not take:
                    return
                self._body_left -= take
                if self._fast_sid:
                    # A read that falls inside one body is passed on as it is, not copied.
                    if take == end and whole_data is not None:
                        body: bytes | memoryview = whole_data
                    elif self._borrowed:
                        body = view[pos:pos + take]
                    else:
                        body = view[pos:pos + take].tobytes()
                    events.append(ev.DataArrived(self._fast_sid, body))
                else:
                    self._slow += view[pos:pos + take]
                pos += take
                if self._body_left:
                    return
                if self._fast_sid and not self._fast_end:  # a fast frame: nothing left to do
                    self._fast_sid = 0
                else:
                    self._frame_done(events)
                continue
            # At a frame boundary: a header, whole in the view or pieced together.
            if not self._head and end - pos >= _HEADER_LEN:
                header = view[pos:pos + _HEADER_LEN]
                pos += _HEADER_LEN
            else:
                take = min(_HEADER_LEN - len(self._head), end - pos)
                self._head += view[pos:pos + take]
                pos += take
                if len(self._head) < _HEADER_LEN:
                    return
                header = memoryview(bytes(self._head))
                self._head.clear()
            self._frame_start(header)
            if not self._body_left:
                self._frame_done(events)

    def _frame_start(self, header: memoryview) -> None:
        high, low, kind, flags, stream_id = _FRAME_HEADER.unpack(header)
        length = high << 8 | low
        stream_id &= 0x7FFFFFFF
        stream = None
        if kind == _DATA_TYPE and not flags & _PADDED:  # fast lane if the stream allows
            stream = self.streams.get(stream_id)
            if (stream is not None and (
                    stream.state_machine.state not in _CAN_RECEIVE
                    or self.state_machine.state not in _OPEN_CONNECTION
                    or self.incoming_buffer._headers_buffer
                    or stream._expected_content_length is not None)):
                stream = None
        if stream is None:
            try:  # what h2's frame buffer would say of this header, said before the body
                Frame.parse_frame_header(header)
            except (InvalidDataError, InvalidFrameError) as exc:
                raise ProtocolError(f"Received frame with invalid header: {exc!s}") from exc
        # Unlike h2, an overlong frame is refused at its header, not after buffering it.
        if length > self.max_inbound_frame_size:
            raise FrameTooLargeError(f"Received overlong frame: length {length}, "
                                     f"max {self.max_inbound_frame_size}")
        self._body_left = length
        if stream is None:
            self._fast_sid = 0
            self._slow += header
            return
        # Charged at once, as h2 charges a whole frame: a window overrun is a connection error
        # (h2's ``WindowManager.window_consumed``, inlined: this runs for every DATA frame).
        for window in (self._inbound_flow_control_window_manager,
                       stream._inbound_window_manager):
            window.current_window_size -= length
            if window.current_window_size < 0:
                raise FlowControlError("Flow control window shrunk below 0")
        self._fast_sid, self._fast_end = stream_id, bool(flags & _END_STREAM)

    def _frame_done(self, events: list[Received]) -> None:
        """The current frame is complete: hand a slow one to h2; end a fast one's stream."""
        if self._fast_sid:
            sid, self._fast_sid = self._fast_sid, 0
            if self._fast_end:  # the stream state is h2's: it sees an empty DATA with the flag
                events.extend(self._receive_frame(DataFrame(sid, flags=["END_STREAM"])))
            return
        buffer = self.incoming_buffer
        buffer.add_data(self._slow)
        self._slow.clear()
        for frame in buffer:
            if (type(frame) is GoAwayFrame and frame.error_code == ErrorCodes.NO_ERROR
                    and self.state_machine.state in _OPEN_CONNECTION):
                events.append(GoingAway(frame.last_stream_id))  # graceful: not h2's to end
                continue
            events.extend(self._receive_frame(frame))
