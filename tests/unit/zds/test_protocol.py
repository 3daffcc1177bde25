"""The sans-io ZDS state machines: agent side and ztunnel side, alone and against each other."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import LocalProtocolError
from inmesh.zds.messages import (
    Ack,
    AddWorkload,
    DelWorkload,
    KeepWorkload,
    SnapshotSent,
    WorkloadInfo,
    WorkloadRequest,
    decode_ack,
    encode_ack,
    encode_request,
)
from inmesh.zds.protocol import (
    Abort,
    Acknowledge,
    AckReceived,
    AckTimedOut,
    AgentConnection,
    AgentState,
    DrainProxy,
    HelloReceived,
    HelloTimedOut,
    KeepaliveDue,
    PeerClosed,
    PeerViolated,
    ReconcileProxies,
    StartProxy,
    ZtunnelConnection,
    ZtunnelState,
)

INFO = WorkloadInfo("web-1", "default", "web")
OK = encode_ack(Ack())


def agent(now: float = 0.0) -> AgentConnection:
    return AgentConnection(now, ack_timeout=5.0, keepalive_interval=2.0)


def ready_agent() -> AgentConnection:
    conn = agent()
    conn.record_received(b"\x08\x01", 0.0)
    conn.send(SnapshotSent(), 0.0)
    conn.record_received(OK, 0.0)
    assert conn.state is AgentState.READY
    return conn


# -- agent side -------------------------------------------------------------------------------


def test_agent_hello_then_snapshot_then_ready() -> None:
    conn = agent()
    assert conn.record_received(b"\x08\x01", 0.1) == HelloReceived(1)
    assert conn.state is AgentState.SENDING_SNAPSHOT
    add = AddWorkload("a", INFO)
    assert conn.send(add, 0.2) == encode_request(add)
    assert conn.outstanding == add
    assert conn.record_received(OK, 0.3) == AckReceived(add, Ack())
    assert conn.send(KeepWorkload("b"), 0.4) == bytes.fromhex("2a 03 0a 01 62")
    assert conn.record_received(encode_ack(Ack("busy")), 0.5) == AckReceived(KeepWorkload("b"), Ack("busy"))
    conn.send(SnapshotSent(), 0.6)
    assert conn.state is AgentState.SENDING_SNAPSHOT
    conn.record_received(OK, 0.7)
    assert conn.state.value == "ready"
    assert conn.outstanding is None


def test_agent_hello_version_is_not_checked() -> None:
    """Istio's agent only logs the version; so do we."""
    assert agent().record_received(b"\x08\x07", 0.0) == HelloReceived(7)


def test_agent_garbage_instead_of_hello_ends_the_connection() -> None:
    conn = agent()
    event = conn.record_received(b"\xff\xff", 0.0)
    assert isinstance(event, PeerViolated)
    assert conn.state is AgentState.CLOSED
    assert conn.next_deadline() is None


def test_agent_hello_deadline() -> None:
    conn = agent(now=10.0)
    assert conn.next_deadline() == 15.0
    assert conn.timer_expired(14.9) is None
    assert conn.timer_expired(15.0) == HelloTimedOut()
    assert conn.state is AgentState.CLOSED


def test_agent_sends_exactly_one_request_at_a_time() -> None:
    conn = ready_agent()
    conn.send(DelWorkload("a"), 1.0)
    with pytest.raises(LocalProtocolError, match="unacked"):
        conn.send(DelWorkload("b"), 1.0)


@pytest.mark.parametrize(
    ("state", "request_"),
    [
        ("hello", AddWorkload("a", INFO)),
        ("snapshot", DelWorkload("a")),
        ("ready", KeepWorkload("a")),
        ("ready", SnapshotSent()),
    ],
)
def test_agent_refuses_requests_the_state_does_not_allow(state: str, request_: WorkloadRequest) -> None:
    conn = agent() if state != "ready" else ready_agent()
    if state == "snapshot":
        conn.record_received(b"\x08\x01", 0.0)
    with pytest.raises(LocalProtocolError, match="may not send"):
        conn.send(request_, 1.0)


def test_agent_unsolicited_ack_is_a_protocol_error() -> None:
    conn = ready_agent()
    event = conn.record_received(OK, 1.0)
    assert isinstance(event, PeerViolated)
    assert "unsolicited" in str(event.error)
    assert conn.state is AgentState.CLOSED


def test_agent_ack_timeout_closes_the_connection() -> None:
    conn = ready_agent()
    conn.send(DelWorkload("a"), 1.0)
    assert conn.next_deadline() == 6.0
    assert conn.timer_expired(5.99) is None
    assert conn.timer_expired(6.0) == AckTimedOut(DelWorkload("a"))
    assert conn.state is AgentState.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.record_received(OK, 6.1)


def test_agent_keepalive_is_due_after_idleness() -> None:
    conn = ready_agent()
    assert conn.next_deadline() == 2.0
    assert conn.timer_expired(2.0) == KeepaliveDue()
    assert conn.next_deadline() == 4.0
    conn.send(DelWorkload("a"), 3.0)
    conn.record_received(OK, 3.5)
    assert conn.next_deadline() == 5.5


@pytest.mark.parametrize(
    ("kwargs", "text"), [({"truncated": True}, "truncated"), ({"fd_count": 1}, "file descriptor")]
)
def test_agent_truncated_records_and_fds_are_protocol_errors(kwargs: dict[str, int], text: str) -> None:
    conn = ready_agent()
    conn.send(DelWorkload("a"), 1.0)
    event = conn.record_received(OK, 1.0, **kwargs)  # type: ignore[arg-type]
    assert isinstance(event, PeerViolated)
    assert text in str(event.error)


def test_agent_eof_and_close() -> None:
    conn = ready_agent()
    assert conn.eof_received() == PeerClosed()
    assert conn.state is AgentState.CLOSED
    conn.close()  # idempotent
    assert conn.state is AgentState.CLOSED


# -- ztunnel side -----------------------------------------------------------------------------


def test_ztunnel_hello_is_v1() -> None:
    assert ZtunnelConnection().hello() == b"\x08\x01"


def test_ztunnel_snapshot_records_add_and_keep_and_del_removes() -> None:
    conn = ZtunnelConnection()
    steps: list[tuple[WorkloadRequest, int, object]] = [
        (AddWorkload("a", INFO), 1, StartProxy("a", INFO)),
        (KeepWorkload("b"), 0, Acknowledge()),
        (AddWorkload("c", INFO), 1, StartProxy("c", INFO)),
        (DelWorkload("c"), 0, DrainProxy("c")),
        (SnapshotSent(), 0, ReconcileProxies(frozenset({"a", "b"}))),
        (AddWorkload("d", INFO), 1, StartProxy("d", INFO)),
        (DelWorkload("a"), 0, DrainProxy("a")),
    ]
    for request, fds, expected in steps:
        assert conn.request_received(encode_request(request), fd_count=fds) == expected
        assert conn.reply() == OK
    assert conn.state is ZtunnelState.READY


def test_ztunnel_reply_carries_the_handler_error() -> None:
    conn = ZtunnelConnection()
    conn.request_received(encode_request(AddWorkload("a", INFO)), fd_count=1)
    assert decode_ack(conn.reply("failure to start proxy")) == Ack("failure to start proxy")
    assert conn.state is ZtunnelState.AWAITING_SNAPSHOT


def _ready_ztunnel() -> ZtunnelConnection:
    conn = ZtunnelConnection()
    conn.request_received(encode_request(SnapshotSent()))
    conn.reply()
    return conn


@pytest.mark.parametrize(
    ("data", "fds", "ready", "reason"),
    [
        (encode_request(KeepWorkload("a")), 0, True, "KeepWorkload"),
        (encode_request(SnapshotSent()), 0, True, "SnapshotSent"),
        (encode_request(AddWorkload("a", None)), 1, False, "without workload_info"),
        (encode_request(AddWorkload("a", None)), 1, True, "without workload_info"),
        (encode_request(AddWorkload("a", INFO)), 0, False, "0 fds"),
        (encode_request(AddWorkload("a", INFO)), 2, True, "2 fds"),
        (encode_request(DelWorkload("a")), 1, True, "file descriptor"),
        (encode_request(KeepWorkload("a")), 1, False, "file descriptor"),
        (encode_request(SnapshotSent()), 1, False, "file descriptor"),
        (b"\xff\x00", 0, False, "undecodable"),
    ],
    ids=["keep-after-snapshot", "second-snapshot", "add-no-info", "add-no-info-ready",
         "add-no-fd", "add-two-fds", "del-with-fd", "keep-with-fd", "snapshot-with-fd", "garbage"],
)
def test_ztunnel_protocol_errors_nack_and_close(data: bytes, fds: int, ready: bool, reason: str) -> None:
    conn = _ready_ztunnel() if ready else ZtunnelConnection()
    command = conn.request_received(data, fd_count=fds)
    assert isinstance(command, Abort)
    assert reason in command.reason
    assert conn.state is ZtunnelState.CLOSED
    nack = decode_ack(conn.reply(""))
    assert nack.error == command.reason
    assert nack.error.startswith("protocol error: ")
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.request_received(encode_request(DelWorkload("a")))


def test_ztunnel_truncated_record_is_a_protocol_error() -> None:
    conn = ZtunnelConnection()
    command = conn.request_received(encode_request(DelWorkload("a")), truncated=True)
    assert isinstance(command, Abort)
    assert "truncated" in command.reason


def test_ztunnel_replies_exactly_once_per_request() -> None:
    conn = ZtunnelConnection()
    with pytest.raises(LocalProtocolError, match="no request"):
        conn.reply()
    conn.request_received(encode_request(DelWorkload("a")))
    with pytest.raises(LocalProtocolError, match="not replied"):
        conn.request_received(encode_request(DelWorkload("b")))
    conn.reply()
    with pytest.raises(LocalProtocolError, match="no request"):
        conn.reply()


# -- properties -------------------------------------------------------------------------------

uids = st.sampled_from(["a", "b", "c", "d"])
any_request: st.SearchStrategy[WorkloadRequest] = st.one_of(
    st.builds(AddWorkload, uids, st.just(INFO) | st.none()),
    st.builds(KeepWorkload, uids),
    st.builds(DelWorkload, uids),
    st.just(SnapshotSent()),
)


@given(st.lists(st.tuples(any_request, st.integers(0, 2)), max_size=25))
def test_ztunnel_follows_the_snapshot_model(steps: list[tuple[WorkloadRequest, int]]) -> None:
    """Against a direct model of reference 5.3 item 7 plus our fd rules: every request gets
    one reply, violations abort, and the keep set is exactly what the model recorded."""
    conn = ZtunnelConnection()
    recorded: set[str] = set()
    snapshot_done = False
    for request, fds in steps:
        command = conn.request_received(encode_request(request), fd_count=fds)
        reply = decode_ack(conn.reply())
        violation = (
            (isinstance(request, AddWorkload) and (request.info is None or fds != 1))
            or (not isinstance(request, AddWorkload) and fds > 0)
            or (isinstance(request, KeepWorkload | SnapshotSent) and snapshot_done)
        )
        if violation:
            assert isinstance(command, Abort)
            assert not reply.ok
            assert conn.state is ZtunnelState.CLOSED
            return
        assert reply.ok
        if isinstance(request, AddWorkload | KeepWorkload) and not snapshot_done:
            recorded.add(request.uid)
        elif isinstance(request, DelWorkload) and not snapshot_done:
            recorded.discard(request.uid)
        elif isinstance(request, SnapshotSent):
            assert command == ReconcileProxies(frozenset(recorded))
            snapshot_done = True
        assert conn.state is (ZtunnelState.READY if snapshot_done else ZtunnelState.AWAITING_SNAPSHOT)


agent_actions = st.one_of(
    st.tuples(st.just("send"), any_request),
    st.tuples(st.just("ack"), st.text(max_size=5)),
    st.tuples(st.just("garbage"), st.binary(max_size=8)),
    st.tuples(st.just("time"), st.floats(0.0, 8.0)),
)


@given(st.lists(agent_actions, max_size=30))
def test_agent_never_has_two_requests_in_flight_and_fails_fast(actions: list[tuple[str, object]]) -> None:
    """Random local sends, peer records and clock jumps: the agent refuses what it may not
    send, matches each ack to the one outstanding request, and ends on any peer misstep."""
    conn = agent()
    conn.record_received(b"\x08\x01", 0.0)
    now = 0.0
    for kind, arg in actions:
        before, outstanding = conn.state, conn.outstanding
        if kind == "send":
            assert isinstance(arg, AddWorkload | KeepWorkload | DelWorkload | SnapshotSent)
            try:
                conn.send(arg, now)
            except LocalProtocolError:
                assert outstanding is not None or before in (AgentState.CLOSED,) or (
                    before is AgentState.READY and isinstance(arg, KeepWorkload | SnapshotSent)
                ) or (before is AgentState.SENDING_SNAPSHOT and isinstance(arg, DelWorkload))
            else:
                assert outstanding is None
                assert conn.outstanding == arg
        elif kind == "time":
            assert isinstance(arg, float)
            now += arg
            event = conn.timer_expired(now)
            if isinstance(event, AckTimedOut):
                assert event.request == outstanding
                assert conn.state is AgentState.CLOSED
        elif before is AgentState.CLOSED:
            with pytest.raises(LocalProtocolError):
                conn.record_received(b"", now)
        else:
            data = encode_ack(Ack(str(arg))) if kind == "ack" else bytes(arg)  # type: ignore[call-overload]
            event = conn.record_received(data, now)
            if isinstance(event, AckReceived):
                assert event.request == outstanding
                assert conn.outstanding is None
            else:
                assert isinstance(event, PeerViolated)
                assert conn.state is AgentState.CLOSED
                assert outstanding is None or kind == "garbage"


snapshot_entries = st.dictionaries(uids, st.booleans(), max_size=4)


@given(snapshot_entries, st.sets(uids), st.lists(st.tuples(st.booleans(), uids), max_size=6))
def test_agent_and_ztunnel_machines_agree(
    entries: dict[str, bool], running: set[str], later: list[tuple[bool, str]]
) -> None:
    """Peers in memory: a snapshot over any running set leaves ztunnel with exactly the
    snapshot's uids; later Adds and Dels each get one OK ack."""
    agent_side, ztunnel_side = agent(), ZtunnelConnection()
    agent_side.record_received(ztunnel_side.hello(), 0.0)
    proxies = set(running)

    def exchange(request: WorkloadRequest) -> None:
        fds = 1 if isinstance(request, AddWorkload) else 0
        command = ztunnel_side.request_received(agent_side.send(request, 0.0), fd_count=fds)
        if isinstance(command, StartProxy):
            proxies.add(command.uid)
        elif isinstance(command, DrainProxy):
            proxies.discard(command.uid)
        elif isinstance(command, ReconcileProxies):
            proxies.intersection_update(command.keep)
        assert agent_side.record_received(ztunnel_side.reply(), 0.0) == AckReceived(request, Ack())

    for uid, has_netns in entries.items():
        exchange(AddWorkload(uid, INFO) if has_netns else KeepWorkload(uid))
    exchange(SnapshotSent())
    assert agent_side.state is AgentState.READY
    assert ztunnel_side.state is ZtunnelState.READY
    assert proxies == {u for u, has in entries.items() if has} | (running & set(entries))
    for is_add, uid in later:
        exchange(AddWorkload(uid, INFO) if is_add else DelWorkload(uid))
        assert (uid in proxies) is is_add
