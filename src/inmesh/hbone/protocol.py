"""HBONE connections, sans-io: HTTP/2 (the ``h2`` library) with one CONNECT stream per tunnel.

`ClientConnection` opens CONNECT streams; `ServerConnection` judges them (400 for anything but a
CONNECT to one of its pod IPs on a non-proxy port) and lets the shell answer 200 or 503. Both
take received bytes and the time, and return `events` for the shell and bytes to send. They
never touch a socket or a clock.

Flow control is the backpressure of the tunnel: credit for received data goes back to the peer
only when the shell reports those bytes delivered (`acknowledge`), so a slow application stops
its peer instead of filling our memory. A stream that ends or is reset gives back whatever it
still held, so the connection window never leaks. Stream errors stay on their stream; only
framing errors, a GOAWAY with an error and a missed PING end the connection
(`ConnectionEnded`). A graceful GOAWAY (NO_ERROR), sent (`drain`) or received, only stops new
streams: the connection is `drained` once the streams it had are done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import h2.events as h2e
from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings

from inmesh.errors import LocalProtocolError
from inmesh.hbone import events as ev
from inmesh.hbone.h2fast import Buffer, FastH2Connection, GoingAway, Received
from inmesh.hbone.headers import BadConnect, Header, Target, connect_request, judge_connect
from inmesh.hbone.keepalive import Keepalive
from inmesh.hbone.settings import HboneSettings

_DEFAULT_CONNECTION_WINDOW = 65535


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
        self.going_away = False
        """GOAWAY (NO_ERROR) sent (`drain`) or received: no new streams; the streams that
        exist finish, and then the connection is `drained`."""
        self._goaway_last: int | None = None  # the last peer stream our GOAWAY let in
        self.deadline_changes = 0
        """Counts the changes of `next_deadline`: a shell that saw the same count need not
        ask again."""
        self._streams: dict[int, _Stream] = {}
        self._keepalive = Keepalive(now, settings.ping_interval, settings.ping_timeout)
        self._idle_timeout = idle_timeout
        self._idle_since: float | None = now
        self._opened = self._opened_at_mark = 0  # streams ever opened; see `_idle_expired`
        self._h2 = FastH2Connection(H2Configuration(
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
        self.chunks_to_send: Callable[[], list[Buffer]] = self._h2.chunks_to_send
        """Everything pending, in order, without joining large DATA payloads (for
        ``transport.writelines``); h2's own method, called once per write."""
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(
            settings.connection_window - _DEFAULT_CONNECTION_WINDOW)

    # -- inputs --------------------------------------------------------------------------

    def receive(self, data: bytes | memoryview, borrowed: bool = False) -> list[ev.Event]:
        """Feed bytes from the peer; return what they meant. (Only `handle_timer` needs the
        time: liveness is judged by PING ACKs, not by traffic.) ``borrowed``: `DataArrived`
        may carry views into ``data``, valid only until the caller reuses its buffer."""
        if self.ended:
            return []
        try:
            h2_events = self._h2.receive_data(data, borrowed)
        except ProtocolError as exc:  # h2 already queued a GOAWAY with the right code
            code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
            return self._end(f"HTTP/2 protocol error from peer: {exc}", int(code), False)
        out: list[ev.Event] = []
        streams = self._streams
        for event in h2_events:
            if isinstance(event, ev.DataArrived):  # the fast lane (`h2fast`): tunnel bytes
                stream = streams.get(event.stream_id)
                if stream is None or stream.remote_ended:  # dropped: discard, give credit
                    self._h2.acknowledge_received_data(len(event.data), event.stream_id)
                    continue
                stream.unacked += len(event.data)
                out.append(event)
                continue
            out.extend(self._dispatch(event))
            if self.ended:
                break
        return out

    def handle_timer(self, now: float) -> list[ev.Event]:
        """Run what is due at ``now`` (PING, PING timeout, idle close)."""
        self.deadline_changes += 1
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
        """When `handle_timer` must run next (None once ended). Only `receive` (a PING ACK,
        the end), `handle_timer` and `close` change it, and each change counts in
        `deadline_changes`."""
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
        stream = self._streams.get(stream_id) or self._stream(stream_id)  # raises if unknown
        if stream.local_ended or self.ended:
            return 0
        h2 = self._h2
        h2_stream = h2.sendable(stream_id)
        if h2_stream is None:  # h2 tells what is wrong (a closed stream, a closed connection)
            return self._send_via_h2(stream_id, data)
        window = min(h2.outbound_flow_control_window, h2_stream.outbound_flow_control_window)
        size = len(data)
        if 0 < size <= window and size <= h2.max_outbound_frame_size:
            h2.emit_data(h2_stream, data)  # the usual case: one frame, the caller's buffer
            return size
        view = memoryview(data)
        taken = min(size, max(0, window))
        frame = h2.max_outbound_frame_size
        for offset in range(0, taken, frame):
            h2.emit_data(h2_stream, view[offset:min(offset + frame, taken)])
        return taken

    def _send_via_h2(self, stream_id: int, data: bytes | memoryview) -> int:
        view = memoryview(data)
        taken = min(len(view), self.send_window(stream_id))
        frame = self._h2.max_outbound_frame_size
        for offset in range(0, taken, frame):
            self._h2.send_data(stream_id, view[offset:min(offset + frame, taken)])
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

    def acknowledge(self, stream_id: int, size: int) -> bool:
        """``size`` bytes of ``stream_id`` reached the application: give the peer credit.
        True if that finished the stream (both sides ended, everything delivered): the
        core has forgotten it."""
        stream = self._streams.get(stream_id)
        if stream is None or size == 0:
            return False  # reset meanwhile: its credit went back already
        if not 0 < size <= stream.unacked:
            raise LocalProtocolError(f"stream {stream_id}: acknowledged {size} bytes, "
                                     f"only {stream.unacked} were delivered")
        stream.unacked -= size
        if not self.ended:
            self._h2.acknowledge_received_data(size, stream_id)
        if stream.finished:
            del self._streams[stream_id]
            return True
        return False

    def close(self, reason: str = "closed locally") -> list[ev.Event]:
        """Send GOAWAY and end the connection; every stream is gone."""
        if self.ended:
            return []
        # After a graceful GOAWAY the last stream id may not grow (RFC 9113 6.8).
        self._h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=self._goaway_last)
        return self._end(reason, ErrorCodes.NO_ERROR, False)

    def drain(self) -> None:
        """Graceful GOAWAY (NO_ERROR): the peer opens no more streams on this connection
        (later ones are refused with REFUSED_STREAM, which a client may retry elsewhere);
        the streams that exist finish. Close the connection once it is `drained`."""
        if self.ended or self._goaway_last is not None:
            return
        self._goaway_last = self._h2.highest_inbound_stream_id
        self.going_away = True
        self._h2.queue_goaway(self._goaway_last)

    @property
    def drained(self) -> bool:
        """Going away and no stream left: time to `close`."""
        return self.going_away and not self._streams and not self.ended

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
        self.deadline_changes += 1
        self._streams.clear()
        return [ev.ConnectionEnded(reason, int(error_code), by_peer)]

    def _dispatch(self, event: Received) -> Iterable[ev.Event]:
        if isinstance(event, GoingAway):
            return self._on_going_away(event.last_stream_id)
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
            self.deadline_changes += 1
            return []
        if isinstance(event, h2e.ConnectionTerminated):
            code = int(event.error_code or 0)
            detail = f": {event.additional_data!r}" if event.additional_data else ""
            return self._end(f"peer sent GOAWAY ({error_name(code)}{detail})", code, True)
        if isinstance(event, h2e.TrailersReceived) and event.stream_id in self._streams:
            return self._violation(event.stream_id)
        if isinstance(event, ev.DataArrived):  # handled by `receive` itself
            return []
        return self._on_headers(event)

    def _on_headers(self, event: h2e.Event) -> Iterable[ev.Event]:
        """Request or response heads; the subclasses know which they expect."""
        return []

    def _on_going_away(self, last: int) -> list[ev.Event]:
        """The peer drains: our streams above ``last`` were never processed (reset them,
        REFUSED_STREAM: safe to retry elsewhere); the others go on."""
        self.going_away = True
        ours = 1 if self._h2.config.client_side else 0  # odd stream ids are the client's
        refused = [sid for sid in self._streams if sid > last and sid % 2 == ours]
        for sid in refused:
            self.reset(sid, ErrorCodes.CANCEL)
        return [ev.StreamReset(sid, ErrorCodes.REFUSED_STREAM, True) for sid in refused]

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
        if self.ended or self.going_away:
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
        if self._goaway_last is not None and sid > self._goaway_last:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)  # opened after our GOAWAY: retry elsewhere
            return []
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
