"""The sans-io HBONE connections, client against server in memory (no sockets, fake time):
settings, CONNECT heads, flow control that waits for delivery, half-close, resets, PING, idle."""

from __future__ import annotations

from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame, WindowUpdateFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from inmesh.hbone import events as ev
from inmesh.hbone.headers import Target
from inmesh.hbone.protocol import ClientConnection, HboneConnection, ServerConnection
from inmesh.hbone.settings import HboneSettings, MiB

POD = "10.0.0.1"
APP = Target(POD, 8080)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Pair:
    """A client and a server connection wired back to back; `pump` moves bytes until quiet."""

    def __init__(self, settings: HboneSettings | None = None, now: float = 0.0) -> None:
        self.settings = settings or HboneSettings()
        self.client = ClientConnection(self.settings, now)
        self.server = ServerConnection(self.settings, now, [POD])
        self.at_client: list[ev.Event] = []
        self.at_server: list[ev.Event] = []
        self.pump()

    def pump(self) -> None:
        while True:
            up, down = self.client.data_to_send(), self.server.data_to_send()
            if not up and not down:
                return
            if up:
                self.at_server += self.server.receive(up)
            if down:
                self.at_client += self.client.receive(down)

    def take(self, side: list[ev.Event], kind: type | None = None) -> list[ev.Event]:
        got = [e for e in side if kind is None or isinstance(e, kind)]
        side[:] = [e for e in side if e not in got]
        return got

    def tunnel(self, target: Target = APP) -> int:
        sid = self.client.open_stream(target)
        self.pump()
        assert self.take(self.at_server, ev.ConnectReceived)[0].stream_id == sid
        self.server.accept(sid)
        self.pump()
        assert self.take(self.at_client, ev.ConnectAnswered) == [ev.ConnectAnswered(sid, 200)]
        return sid


def frames(data: bytes) -> list[Frame]:
    """Parse HTTP/2 frames (after the client preface, if any)."""
    data = data.removeprefix(PREFACE)
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def received_bytes(events: Sequence[ev.Event], sid: int) -> int:
    return sum(len(e.data) for e in events if isinstance(e, ev.DataArrived) and e.stream_id == sid)


def test_client_announces_istio_windows_frame_size_and_stream_cap() -> None:
    client = ClientConnection(HboneSettings(), 0.0)
    sent = frames(client.data_to_send())
    settings_frame = next(f for f in sent if isinstance(f, SettingsFrame))
    assert settings_frame.settings | {SettingCodes.HEADER_TABLE_SIZE: 4096} == {
        SettingCodes.HEADER_TABLE_SIZE: 4096,
        SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
        SettingCodes.INITIAL_WINDOW_SIZE: 4 * MiB,
        SettingCodes.MAX_FRAME_SIZE: MiB,
        SettingCodes.MAX_CONCURRENT_STREAMS: 100,
        SettingCodes.MAX_HEADER_LIST_SIZE: 16 << 10,
        SettingCodes.ENABLE_PUSH: 0,
    }
    update = next(f for f in sent if isinstance(f, WindowUpdateFrame))
    assert (update.stream_id, update.window_increment + 65535) == (0, 16 * MiB)


def test_server_announces_200_streams_and_64k_headers() -> None:
    server = ServerConnection(HboneSettings(), 0.0, [POD])
    settings_frame = next(f for f in frames(server.data_to_send()) if isinstance(f, SettingsFrame))
    assert settings_frame.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 200
    assert settings_frame.settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 64 << 10
    assert settings_frame.settings[SettingCodes.INITIAL_WINDOW_SIZE] == 4 * MiB


def test_connect_head_on_the_wire_ipv6_in_brackets() -> None:
    """Decoded by a plain h2 server, not by ours: exactly the pseudo-headers ztunnel sends."""
    client = ClientConnection(HboneSettings(), 0.0)
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    raw.initiate_connection()
    client.open_stream(Target("fd00::7", 8080), [("forwarded", 'for="[fd00::9]:1234"'),
                                                  ("baggage", "k8s.namespace.name=shop")])
    events = raw.receive_data(client.data_to_send())
    request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert request.headers == [
        (b":method", b"CONNECT"), (b":authority", b"[fd00::7]:8080"),
        (b"forwarded", b'for="[fd00::9]:1234"'), (b"baggage", b"k8s.namespace.name=shop")]
    assert request.stream_ended is None  # the tunnel stays open for data


def test_accepted_tunnel_carries_bytes_both_ways() -> None:
    pair = Pair()
    sid = pair.tunnel()
    assert pair.client.send(sid, b"up") == 2
    pair.pump()
    assert pair.take(pair.at_server, ev.DataArrived) == [ev.DataArrived(sid, b"up")]
    assert pair.server.send(sid, b"down") == 4
    pair.pump()
    assert pair.take(pair.at_client, ev.DataArrived) == [ev.DataArrived(sid, b"down")]


def test_refused_tunnel_reports_the_status_and_frees_the_stream() -> None:
    pair = Pair()
    sid = pair.client.open_stream(APP)
    pair.pump()
    pair.server.refuse(sid, 503)
    pair.pump()
    assert pair.take(pair.at_client, ev.ConnectAnswered) == [ev.ConnectAnswered(sid, 503)]
    assert (pair.client.stream_count, pair.server.stream_count) == (0, 0)


@pytest.mark.parametrize(("target", "reason"), [
    (Target("10.0.0.2", 80), "is not this pod"),
    (Target(POD, 15008), "proxy port"),
    (Target(POD, 0), "out of range"),
])
def test_server_answers_400_on_its_own_for_bad_targets(target: Target, reason: str) -> None:
    pair = Pair()
    sid = pair.client.open_stream(target)
    pair.pump()
    refused = pair.take(pair.at_server, ev.ConnectRefused)
    assert [(e.stream_id, e.status) for e in refused] == [(sid, 400)]
    assert reason in refused[0].reason  # type: ignore[attr-defined]
    assert pair.take(pair.at_client, ev.ConnectAnswered) == [ev.ConnectAnswered(sid, 400)]
    assert pair.take(pair.at_server, ev.ConnectReceived) == []
    assert pair.tunnel() > sid  # the connection serves the next stream


def test_credit_returns_only_when_the_consumer_acknowledges() -> None:
    pair = Pair()
    sid = pair.tunnel()
    window = pair.settings.stream_window
    assert pair.client.send(sid, bytes(window + 100)) == window  # the rest must wait
    pair.pump()
    assert received_bytes(pair.at_server, sid) == window
    assert pair.client.send_window(sid) == 0
    pair.pump()
    assert pair.client.send_window(sid) == 0  # delivery to the server is not enough
    pair.server.acknowledge(sid, window)
    pair.pump()
    assert pair.client.send_window(sid) == window


def test_three_stalled_streams_do_not_block_a_fourth() -> None:
    """The connection window is 4x the stream window (ztunnel #1538): streams whose readers
    stall cannot starve the others."""
    pair = Pair()
    stalled = [pair.tunnel() for _ in range(3)]
    for sid in stalled:
        assert pair.client.send(sid, bytes(pair.settings.stream_window)) == pair.settings.stream_window
    pair.pump()
    fourth = pair.tunnel()
    assert pair.client.send_window(fourth) == pair.settings.stream_window


def test_reset_streams_give_back_their_connection_credit() -> None:
    pair = Pair()
    sids = [pair.tunnel() for _ in range(4)]
    for sid in sids:
        pair.client.send(sid, bytes(pair.settings.stream_window))
    pair.pump()
    spare = pair.tunnel()
    assert pair.client.send_window(spare) == 0  # 16 MiB unacknowledged: connection full
    for sid in sids:
        pair.server.reset(sid)  # undelivered data is dropped, its credit returned
    pair.pump()
    assert pair.client.send_window(spare) == pair.settings.stream_window
    assert {e.stream_id for e in pair.take(pair.at_client, ev.StreamReset)} == set(sids)  # type: ignore[attr-defined]


def test_half_close_each_way_then_the_stream_is_forgotten() -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.client.end_stream(sid)
    pair.pump()
    assert pair.take(pair.at_server, ev.PeerEnded) == [ev.PeerEnded(sid)]
    assert pair.server.send(sid, b"still talking") == 13  # the other way is open
    pair.server.end_stream(sid)
    pair.pump()
    assert pair.take(pair.at_client, ev.DataArrived) == [ev.DataArrived(sid, b"still talking")]
    assert pair.take(pair.at_client, ev.PeerEnded) == [ev.PeerEnded(sid)]
    assert pair.server.stream_count == 0
    assert pair.client.stream_count == 1  # 13 bytes not yet delivered by the client's shell
    pair.client.acknowledge(sid, 13)
    assert pair.client.stream_count == 0


@pytest.mark.parametrize("resetter", ["client", "server"])
def test_reset_reaches_the_peer_with_its_code(resetter: str) -> None:
    pair = Pair()
    sid = pair.tunnel()
    side: HboneConnection = getattr(pair, resetter)
    side.reset(sid, ErrorCodes.CONNECT_ERROR)
    pair.pump()
    other = pair.at_server if resetter == "client" else pair.at_client
    assert pair.take(other, ev.StreamReset) == [ev.StreamReset(sid, ErrorCodes.CONNECT_ERROR, True)]
    assert (pair.client.stream_count, pair.server.stream_count) == (0, 0)


def test_trailers_on_a_tunnel_reset_only_that_stream() -> None:
    pair = Pair()
    bad, good = pair.tunnel(), pair.tunnel()
    pair.client._h2.send_headers(bad, [("x-trailer", "1")], end_stream=True)
    pair.pump()
    assert pair.take(pair.at_server, ev.StreamReset) == [
        ev.StreamReset(bad, ErrorCodes.PROTOCOL_ERROR, False)]
    assert pair.client.send(good, b"ok") == 2
    pair.pump()
    assert pair.take(pair.at_server, ev.DataArrived) == [ev.DataArrived(good, b"ok")]


def test_padding_is_credited_without_waiting_for_delivery() -> None:
    """A peer that pads every frame must not drain the window: padding is never delivered."""
    small = HboneSettings(stream_window=65535, connection_window=65535 * 4)
    server = ServerConnection(small, 0.0, [POD])
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    raw.send_headers(1, [(":method", "CONNECT"), (":authority", str(APP))])
    server.receive(raw.data_to_send())
    server.accept(1)
    raw.receive_data(server.data_to_send())
    for _ in range(200):  # 200 x (1000 + 256) bytes: far more than one window
        assert raw.local_flow_control_window(1) >= 1256
        raw.send_data(1, bytes(1000), pad_length=255)
        got = server.receive(raw.data_to_send())
        assert received_bytes(got, 1) == 1000
        server.acknowledge(1, 1000)
        raw.receive_data(server.data_to_send())


def test_pings_every_interval_and_drops_a_silent_peer() -> None:
    pair = Pair()
    assert pair.client.next_deadline() == 10.0  # first PING 10 s after the start
    assert pair.client.handle_timer(10.0) == []
    pair.pump()  # the server acknowledges the PING
    assert pair.client.next_deadline() == 20.0
    assert pair.client.handle_timer(20.0) == []
    pair.client.data_to_send()  # this PING is lost on the way: no ACK will come
    assert pair.client.next_deadline() == 40.0
    assert pair.client.handle_timer(39.9) == []
    [ended] = pair.client.handle_timer(40.0)
    assert isinstance(ended, ev.ConnectionEnded)
    assert "no PING ACK within 20 s" in ended.reason
    assert pair.client.next_deadline() is None


def test_server_pings_too() -> None:
    pair = Pair()
    assert pair.server.next_deadline() == 10.0
    pair.server.handle_timer(10.0)
    pair.pump()
    assert pair.server.next_deadline() == 20.0  # ACKed: the next PING is due, no timeout


def test_idle_client_connection_closes_itself_with_goaway() -> None:
    pair = Pair(HboneSettings(idle_timeout=30.0))
    sid = pair.tunnel()
    pair.client.reset(sid)
    pair.pump()
    now, ended = 0.0, []
    while not ended:
        deadline = pair.client.next_deadline()
        assert deadline is not None
        now = deadline
        ended = pair.client.handle_timer(now)
        pair.pump()
    assert 30.0 <= now <= 40.0  # idle_timeout, sampled at the PING cadence
    assert "idle" in ended[0].reason  # type: ignore[attr-defined]
    # Its GOAWAY (NO_ERROR) is graceful: the server, with no stream left, is drained (its
    # shell closes it; the TCP close would end it anyway).
    assert pair.take(pair.at_server, ev.ConnectionEnded) == []
    assert pair.server.drained


def test_drain_lets_streams_finish_and_refuses_new_ones() -> None:
    """The server drains (ztunnel leaving): GOAWAY(NO_ERROR, last stream), the tunnel that
    exists goes on both ways, the client opens no more streams, and a CONNECT that crossed
    the GOAWAY is refused with REFUSED_STREAM (never processed: safe to retry elsewhere)."""
    pair = Pair()
    sid = pair.tunnel()
    crossing = pair.client.open_stream(APP)  # sent before the client sees the GOAWAY
    pair.server.drain()
    goaway = [f for f in frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert [(f.last_stream_id, f.error_code) for f in goaway] == [(sid, ErrorCodes.NO_ERROR)]
    pair.server.drain()  # once only
    assert pair.server.going_away
    assert not pair.server.drained

    # Deliver the GOAWAY by hand (taken above to look at it), then the crossing CONNECT.
    goaway_bytes = goaway[0].serialize()
    pair.at_client += pair.client.receive(goaway_bytes)
    assert pair.client.going_away
    assert pair.client.capacity == 0
    assert pair.take(pair.at_client, ev.StreamReset) == [
        ev.StreamReset(crossing, ErrorCodes.REFUSED_STREAM, True)]
    pair.pump()
    assert pair.take(pair.at_server, ev.ConnectReceived) == []  # refused, not judged

    pair.client.send(sid, b"still")
    pair.server.send(sid, b"here")
    pair.pump()
    assert received_bytes(pair.at_server, sid) == 5
    assert received_bytes(pair.at_client, sid) == 4
    assert not pair.client.ended
    assert not pair.server.ended

    pair.client.end_stream(sid)
    pair.server.end_stream(sid)
    pair.pump()
    pair.client.acknowledge(sid, 4)
    pair.server.acknowledge(sid, 5)
    assert pair.server.drained
    assert pair.client.drained
    pair.server.close("drained")
    final = [f for f in frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert [f.last_stream_id for f in final] == [sid]  # never higher than the first GOAWAY


def test_a_crossing_connect_is_refused_by_a_draining_server() -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.server.drain()
    late = pair.client.open_stream(APP)  # the client has not seen the GOAWAY yet
    pair.at_server += pair.server.receive(pair.client.data_to_send())
    assert pair.take(pair.at_server, ev.ConnectReceived) == []
    refused = [f for f in frames(pair.server.data_to_send()) if f.stream_id == late]
    assert [(type(f).__name__, getattr(f, "error_code", None)) for f in refused] == [
        ("RstStreamFrame", ErrorCodes.REFUSED_STREAM)]
    assert pair.server.has_stream(sid)
    assert not pair.server.has_stream(late)


def test_a_goaway_with_an_error_still_ends_the_connection() -> None:
    pair = Pair()
    sid = pair.tunnel()
    frame = GoAwayFrame(0)
    frame.last_stream_id, frame.error_code = sid, ErrorCodes.INTERNAL_ERROR
    [ended] = pair.client.receive(frame.serialize())
    assert isinstance(ended, ev.ConnectionEnded)
    assert ended.by_peer
    assert ended.error_code == ErrorCodes.INTERNAL_ERROR
    assert pair.client.ended


def test_connection_with_streams_is_never_idle() -> None:
    pair = Pair(HboneSettings(idle_timeout=30.0))
    pair.tunnel()
    for now in (10.0, 20.0, 30.0, 40.0, 50.0, 60.0):
        assert pair.client.handle_timer(now) == []
        pair.pump()
    assert not pair.client.ended


def test_client_respects_its_stream_cap() -> None:
    pair = Pair(HboneSettings(client_max_streams=2))
    pair.tunnel()
    pair.tunnel()
    assert pair.client.capacity == 0
    with pytest.raises(Exception, match="no stream capacity"):
        pair.client.open_stream(APP)


def test_garbage_instead_of_a_preface_ends_the_connection_without_an_exception() -> None:
    server = ServerConnection(HboneSettings(), 0.0, [POD])
    [ended] = server.receive(b"GET / HTTP/1.1\r\n\r\n" * 4)
    assert isinstance(ended, ev.ConnectionEnded)
    assert not ended.by_peer
    assert server.receive(b"more") == []


def test_framing_error_ends_the_connection_with_goaway() -> None:
    pair = Pair()
    pair.tunnel()
    data_on_stream_zero = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
    [ended] = pair.server.receive(data_on_stream_zero)
    assert isinstance(ended, ev.ConnectionEnded)
    assert ended.error_code == ErrorCodes.PROTOCOL_ERROR
    assert [f.type for f in frames(pair.server.data_to_send())] == [0x7]  # GOAWAY
    assert pair.server.stream_count == 0


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=30))
def test_any_chunking_of_the_byte_stream_gives_the_same_events(cuts: list[int]) -> None:
    client = ClientConnection(HboneSettings(), 0.0)
    sids = [client.open_stream(Target(POD, 80 + i)) for i in range(3)]
    for i, sid in enumerate(sids):
        client.send(sid, bytes([i]) * 3000)
    client.end_stream(sids[1])
    wire = client.data_to_send()

    def feed(chunks: list[bytes]) -> list[tuple[str, int, int]]:
        server = ServerConnection(HboneSettings(), 0.0, [POD])
        seen: list[tuple[str, int, int]] = []
        for chunk in chunks:
            for e in server.receive(chunk):
                size = len(e.data) if isinstance(e, ev.DataArrived) else 0
                seen.append((type(e).__name__, getattr(e, "stream_id", 0) or 0, size))
        return _merge_data(seen)

    pieces, offset = [], 0
    for cut in cuts:
        pieces.append(wire[offset:offset + cut])
        offset += cut
    pieces.append(wire[offset:])
    assert feed([p for p in pieces if p]) == feed([wire])


def _merge_data(seen: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Sum consecutive DataArrived of one stream: chunking may split a frame's delivery."""
    out: list[tuple[str, int, int]] = []
    for item in seen:
        if out and item[0] == "DataArrived" and out[-1][:2] == item[:2]:
            out[-1] = (item[0], item[1], out[-1][2] + item[2])
        else:
            out.append(item)
    return out


@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=600), keep=st.integers(min_value=0, max_value=200))
def test_mutated_input_never_raises_only_ends_the_connection(junk: bytes, keep: int) -> None:
    """A valid opening (preface, SETTINGS, a CONNECT) cut anywhere and followed by junk: the
    server core only ever reports events; no exception escapes."""
    client = ClientConnection(HboneSettings(), 0.0)
    client.send(client.open_stream(APP), b"data")
    valid = client.data_to_send()
    server = ServerConnection(HboneSettings(), 0.0, [POD])
    events = server.receive(valid[:keep] + junk)
    assert all(isinstance(e, ev.Event.__args__) for e in events)  # type: ignore[attr-defined]
    server.handle_timer(100.0)
    server.data_to_send()


def test_data_frame_repr_stays_cheap() -> None:
    """h2 builds repr(frame) for every received frame; ours must not copy the payload."""
    from hyperframe.frame import DataFrame

    assert repr(DataFrame(1, b"x" * (1 << 20))).endswith(": <1048576 bytes>")


def _open_big_stream(conn: h2.connection.H2Connection) -> None:
    """Stream 1 open with windows and frame size that never limit the ops; nothing queued."""
    conn.initiate_connection()
    conn.update_settings({SettingCodes.MAX_FRAME_SIZE: (1 << 24) - 1})
    conn.local_settings.acknowledge()
    conn.max_outbound_frame_size = (1 << 24) - 1
    conn.outbound_flow_control_window = 1 << 30
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", "x")])
    conn.streams[1].outbound_flow_control_window = 1 << 30
    conn.clear_outbound_data_buffer()


def _plain_h2_wire(ops: list[tuple[str, int]]) -> bytes:
    """What stock h2 sends for the same operations as `_run_ops` (reference serializer)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    _open_big_stream(conn)
    for op, size in ops:
        if op == "data":
            conn.send_data(1, bytes([size % 251]) * size)
        elif op == "padded":
            conn.send_data(1, bytes([size % 251]) * size, pad_length=size % 7)
        elif op == "ping":
            conn.ping(size.to_bytes(8, "big"))
        else:
            conn.end_stream(1)
    return conn.data_to_send()


def _run_ops(ops: list[tuple[str, int]], joined: bool) -> bytes:
    from inmesh.hbone.h2fast import FastH2Connection

    conn = FastH2Connection(h2.config.H2Configuration(client_side=True))
    _open_big_stream(conn)
    out = b""
    for op, size in ops:
        if op == "data":
            conn.send_data(1, memoryview(bytes([size % 251]) * size))
        elif op == "padded":
            conn.send_data(1, bytes([size % 251]) * size, pad_length=size % 7)
        elif op == "ping":
            conn.ping(size.to_bytes(8, "big"))
        else:
            conn.end_stream(1)
        if not joined and size % 3 == 0:  # drain now and then, as the shell does
            out += b"".join(conn.chunks_to_send())
    return out + (conn.data_to_send() if joined else b"".join(conn.chunks_to_send()))


_OPS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["data", "padded"]),
              st.one_of(st.integers(0, 100), st.integers(16_000, 70_000))),
    st.tuples(st.just("ping"), st.integers(0, 1000))), max_size=12).map(
        lambda ops: [*ops, ("end", 0)])


@settings(max_examples=80, deadline=None)
@given(ops=_OPS)
def test_data_frames_serialize_byte_for_byte_as_h2_does(ops: list[tuple[str, int]]) -> None:
    """The pass-through DATA serializer, drained as chunks or joined, writes exactly what h2's
    own serializer writes, in the same order as the other frames."""
    expected = _plain_h2_wire(ops)
    assert _run_ops(ops, joined=False) == expected
    assert _run_ops(ops, joined=True) == expected


def test_large_payloads_go_out_by_reference_small_ones_joined() -> None:
    from inmesh.hbone.h2fast import ZERO_COPY_MIN

    pair = Pair()
    sid = pair.tunnel()
    big = bytes(ZERO_COPY_MIN)
    pair.client.send(sid, b"small")
    pair.client.send(sid, big)
    chunks = pair.client.chunks_to_send()
    header = bytes([0, 0x40, 0, 0, 0]) + sid.to_bytes(4, "big")  # 16 KiB, DATA, no flags
    assert len(chunks) == 2
    assert bytes(chunks[0]).endswith(b"small" + header)
    assert chunks[1] is big  # not copied
    assert not pair.client.has_output
    assert pair.client.chunks_to_send() == []
    [frame] = frames(bytes(chunks[0][-9:]) + bytes(chunks[1]))
    assert frame.stream_id == sid
    assert frame.body_len == ZERO_COPY_MIN


def test_writable_buffers_are_copied_before_they_are_kept() -> None:
    from inmesh.hbone.h2fast import ZERO_COPY_MIN

    pair = Pair()
    sid = pair.tunnel()
    buf = bytearray(b"a" * ZERO_COPY_MIN)
    assert pair.client.send(sid, buf) == ZERO_COPY_MIN
    buf[:] = b"b" * ZERO_COPY_MIN  # the caller reuses its buffer after send returned
    pair.pump()
    [data] = pair.take(pair.at_server, ev.DataArrived)
    assert isinstance(data, ev.DataArrived)
    assert data.data == b"a" * ZERO_COPY_MIN


def _receive_all(conn: h2.connection.H2Connection, pieces: list[bytes]) -> tuple[
        dict[int, bytes], list[object], bytes]:
    """What a server connection makes of ``pieces``: the DATA bytes per stream (from h2's
    events or the fast lane's), every other event by kind, and the error or what it would send."""
    from inmesh.hbone.h2fast import GoingAway

    data: dict[int, bytes] = {}
    others: list[object] = []
    outcome = b""
    try:
        for piece in pieces:
            for event in conn.receive_data(piece):
                if isinstance(event, h2.events.DataReceived | ev.DataArrived):
                    sid = event.stream_id or 0
                    data[sid] = data.get(sid, b"") + bytes(event.data or b"")
                elif isinstance(event, GoingAway) or (
                        isinstance(event, h2.events.ConnectionTerminated)
                        and event.error_code == ErrorCodes.NO_ERROR):
                    # A graceful GOAWAY: h2 closes the connection (and drops what it had to
                    # send), the fast lane keeps it for the streams that exist. Compared up
                    # to here.
                    others.append(("graceful GOAWAY", getattr(event, "last_stream_id", None)))
                    return data, others, b""
                else:
                    others.append((type(event).__name__, getattr(event, "stream_id", None)))
        outcome = conn.data_to_send()
    except h2.exceptions.ProtocolError as exc:
        others.append((type(exc).__name__, int(exc.error_code)))
    return data, others, outcome


def _peer_wire(overrun: bool, goaway: bool = False) -> bytes:
    """A client's bytes: CONNECT, DATA (plain, padded, large, one carrying END_STREAM on a
    second stream), PING, and with ``overrun`` more DATA than the server's window allows; with
    ``goaway`` the bytes end with a graceful GOAWAY after the PING."""
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    raw.send_headers(1, [(":method", "CONNECT"), (":authority", "x")])
    raw.send_headers(3, [(":method", "CONNECT"), (":authority", "y")])
    raw.send_data(1, b"a" * 100)
    raw.send_data(1, b"b" * 50, pad_length=7)
    raw.ping(b"12345678")
    if goaway:  # NO_ERROR; the wire ends there: stock h2 fails any frame after a GOAWAY
        goaway_frame = GoAwayFrame(0)
        goaway_frame.last_stream_id, goaway_frame.error_code = 0, ErrorCodes.NO_ERROR
        return raw.data_to_send() + goaway_frame.serialize()
    raw.send_data(3, b"d" * 1000, end_stream=True)
    raw.send_data(1, bytes(range(256)) * 40)
    raw.send_data(1, b"")
    if overrun:  # a peer that ignores our window: connection error FLOW_CONTROL_ERROR
        raw.outbound_flow_control_window = raw.streams[1].outbound_flow_control_window = 1 << 20
        for _ in range(5):
            raw.send_data(1, b"e" * 16000)
    raw.send_data(1, b"c" * 3, end_stream=True)
    return raw.data_to_send()


@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=300), keep=st.integers(min_value=0, max_value=12_000),
       cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=8),
       overrun=st.booleans(), goaway=st.booleans())
def test_fast_lane_receives_what_h2_receives(junk: bytes, keep: int, cuts: list[int],
                                             overrun: bool, goaway: bool) -> None:
    """Frames cut anywhere, then junk, in any chunking: the fast lane delivers the same bytes
    per stream (some sooner: a body is passed on as it arrives, so h2 may lag by the part of
    one frame), the same other events and the same errors with the same codes as stock h2,
    and leaves the same bytes to send (SETTINGS and PING ACKs, GOAWAY). Two differences are
    wanted: an overlong frame is refused at its header, where h2 first buffers all of it; a
    graceful GOAWAY does not end the connection (compared up to it)."""
    from inmesh.hbone.h2fast import FastH2Connection

    wire = _peer_wire(overrun, goaway)
    if goaway:
        junk = b""  # stock h2 cannot take any frame after a GOAWAY (python-hyper/h2#1181)
    complete = keep >= len(wire)
    wire = wire[:keep] + junk
    pieces, offset = [], 0
    for cut in cuts:
        pieces.append(wire[offset:offset + cut])
        offset += cut
    pieces.append(wire[offset:])
    config = h2.config.H2Configuration(client_side=False)
    fast_data, fast_others, fast_out = _receive_all(FastH2Connection(config), pieces)
    h2_data, h2_others, h2_out = _receive_all(h2.connection.H2Connection(config), pieces)
    if fast_others[-1:] == [("FrameTooLargeError", ErrorCodes.FRAME_SIZE_ERROR)] \
            and h2_others[:len(fast_others) - 1] == fast_others[:-1] \
            and not any(str(kind).endswith("Error") for kind, _ in h2_others):
        return  # refused at the header; h2 would buffer the overlong frame before refusing it
    assert fast_others == h2_others
    assert fast_out == h2_out
    assert fast_data.keys() >= h2_data.keys()
    for sid, got in fast_data.items():
        assert got.startswith(h2_data.get(sid, b""))
        if complete and not junk:
            assert got == h2_data.get(sid, b"")


@settings(max_examples=60, deadline=None)
@given(acks=st.lists(st.integers(min_value=0, max_value=9_000), max_size=12),
       stream_id=st.sampled_from([1, 3]))
def test_acknowledging_sends_the_window_updates_h2_sends(acks: list[int],
                                                         stream_id: int) -> None:
    """The lean acknowledge gives back credit exactly as h2 does: same WINDOW_UPDATE frames,
    for the connection and the stream, at the same moments (stream 3 ended: connection only)."""
    from inmesh.hbone.h2fast import FastH2Connection

    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    raw.send_headers(1, [(":method", "CONNECT"), (":authority", "x")])
    raw.send_headers(3, [(":method", "CONNECT"), (":authority", "y")], end_stream=True)
    for _ in range(4):  # within the default 64 KiB windows
        raw.send_data(1, b"z" * 16_000)
    wire = raw.data_to_send()
    config = h2.config.H2Configuration(client_side=False)
    outputs = []
    for conn in (FastH2Connection(config), h2.connection.H2Connection(config)):
        conn.receive_data(wire)
        conn.data_to_send()
        out = []
        for size in acks:
            conn.acknowledge_received_data(size, stream_id)
            out.append(conn.data_to_send())
        outputs.append(out)
    assert outputs[0] == outputs[1]
