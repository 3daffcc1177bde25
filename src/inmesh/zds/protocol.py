"""Sans-io ZDS connection state machines: `AgentConnection` (node agent) and `ZtunnelConnection`.

They take received records, the current time and local intentions, and return bytes to send,
events (what happened) or commands (what the shell must do). They never touch a socket or a
clock; the asyncio shells (`server`, `client`) do. Reference: istio-inpod.md section 5.3.

Deliberate deviations from Istio, both so that one bad record cannot take down a node:

* Istio's ztunnel exits(1) on a protocol error (Keep after SnapshotSent, a second SnapshotSent,
  Add without workload_info). `ZtunnelConnection` instead NACKs the record with the reason and
  orders the connection dropped (`Abort`); the client reconnects and gets a fresh snapshot, and
  every running proxy keeps running meanwhile. The same holds for an Add without exactly one fd,
  any other message with an fd, and a truncated or undecodable record.
* Istio's agent keeps a connection after an ack timeout, so a late ack can be taken as the reply
  to the next request (reference 10.3). `AgentConnection` closes it instead (`AckTimedOut`):
  ztunnel reconnects and the fresh snapshot reconciles whatever the lost ack was about.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from inmesh.errors import LocalProtocolError, RemoteProtocolError
from inmesh.zds.messages import (
    VERSION_V1,
    Ack,
    AddWorkload,
    DelWorkload,
    Hello,
    KeepWorkload,
    SnapshotSent,
    WorkloadInfo,
    WorkloadRequest,
    ZdsDecodeError,
    decode_ack,
    decode_hello,
    decode_request,
    encode_ack,
    encode_hello,
    encode_request,
    nack_text,
)

# --------------------------------------------------------------------------------------------
# Agent side


class AgentState(enum.Enum):
    AWAITING_HELLO = "awaiting hello"
    SENDING_SNAPSHOT = "sending snapshot"
    READY = "ready"
    CLOSED = "closed"


class _AgentInput(enum.Enum):
    HELLO_RECEIVED = enum.auto()
    SNAPSHOT_ACKED = enum.auto()
    ENDED = enum.auto()  # EOF, peer violation, timeout or local close


_AGENT_TRANSITIONS: dict[tuple[AgentState, _AgentInput], AgentState] = {
    (AgentState.AWAITING_HELLO, _AgentInput.HELLO_RECEIVED): AgentState.SENDING_SNAPSHOT,
    (AgentState.SENDING_SNAPSHOT, _AgentInput.SNAPSHOT_ACKED): AgentState.READY,
    **{(s, _AgentInput.ENDED): AgentState.CLOSED for s in AgentState},
}

_AGENT_MAY_SEND: dict[AgentState, tuple[type[WorkloadRequest], ...]] = {
    AgentState.SENDING_SNAPSHOT: (AddWorkload, KeepWorkload, SnapshotSent),
    AgentState.READY: (AddWorkload, DelWorkload),
}


@dataclass(frozen=True)
class HelloReceived:
    version: int


@dataclass(frozen=True)
class AckReceived:
    request: WorkloadRequest
    ack: Ack


@dataclass(frozen=True)
class HelloTimedOut:
    """ztunnel did not say Hello in time; the connection is closed."""


@dataclass(frozen=True)
class AckTimedOut:
    """No ack for `request` in time; the connection is closed (see module docstring)."""

    request: WorkloadRequest


@dataclass(frozen=True)
class KeepaliveDue:
    """The connection has been idle for a keepalive interval: check that the peer is still there."""


@dataclass(frozen=True)
class PeerViolated:
    """ztunnel sent something ZDS does not allow; the connection is closed."""

    error: RemoteProtocolError


@dataclass(frozen=True)
class PeerClosed:
    """ztunnel closed the connection."""


AgentEvent = (
    HelloReceived | AckReceived | HelloTimedOut | AckTimedOut | KeepaliveDue | PeerViolated
    | PeerClosed
)


@dataclass
class _Outstanding:
    request: WorkloadRequest
    deadline: float


class AgentConnection:
    """One ZDS connection as the node agent sees it: Hello, snapshot, then Add/Del, one at a time.

    Exactly one request is outstanding at a time; a record that is not the expected Hello or the
    ack of the outstanding request ends the connection. `ack_timeout` (seconds) bounds the wait
    for the Hello and for each ack; `keepalive_interval` is the idle time after which
    `timer_expired` reports `KeepaliveDue`.
    """

    def __init__(self, now: float, *, ack_timeout: float, keepalive_interval: float) -> None:
        self.state = AgentState.AWAITING_HELLO
        self._ack_timeout = ack_timeout
        self._keepalive_interval = keepalive_interval
        self._hello_deadline = now + ack_timeout
        self._last_activity = now
        self._outstanding: _Outstanding | None = None

    @property
    def outstanding(self) -> WorkloadRequest | None:
        return self._outstanding.request if self._outstanding else None

    def send(self, request: WorkloadRequest, now: float) -> bytes:
        """Encode `request` and wait for its ack from now on. Raises LocalProtocolError if the
        request is not allowed in this state or another one is still outstanding."""
        allowed = _AGENT_MAY_SEND.get(self.state, ())
        if not isinstance(request, allowed):
            raise LocalProtocolError(f"ZDS agent may not send {request!r} while {self.state.value}")
        if self._outstanding is not None:
            raise LocalProtocolError(
                f"ZDS agent may not send {request!r}: {self._outstanding.request!r} is unacked"
            )
        data = encode_request(request)
        self._outstanding = _Outstanding(request, now + self._ack_timeout)
        self._last_activity = now
        return data

    def record_received(
        self, data: bytes, now: float, *, fd_count: int = 0, truncated: bool = False
    ) -> AgentEvent:
        if self.state is AgentState.CLOSED:
            raise LocalProtocolError("ZDS agent connection is closed: no more records expected")
        self._last_activity = now
        if truncated or fd_count:
            what = "a truncated record" if truncated else f"{fd_count} file descriptor(s)"
            return self._violated(f"ztunnel sent {what}")
        try:
            if self.state is AgentState.AWAITING_HELLO:
                hello = decode_hello(data)
                self._move(_AgentInput.HELLO_RECEIVED)
                return HelloReceived(hello.version)
            return self._ack_received(decode_ack(data))
        except ZdsDecodeError as exc:
            self._end()
            return PeerViolated(exc)

    def eof_received(self) -> PeerClosed:
        self._end()
        return PeerClosed()

    def close(self) -> None:
        self._end()

    def next_deadline(self) -> float | None:
        if self.state is AgentState.AWAITING_HELLO:
            return self._hello_deadline
        if self._outstanding is not None:
            return self._outstanding.deadline
        if self.state is AgentState.READY:
            return self._last_activity + self._keepalive_interval
        return None

    def timer_expired(self, now: float) -> AgentEvent | None:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return None
        if self.state is AgentState.AWAITING_HELLO:
            self._end()
            return HelloTimedOut()
        if self._outstanding is not None:
            request = self._outstanding.request
            self._end()
            return AckTimedOut(request)
        self._last_activity = now
        return KeepaliveDue()

    def _ack_received(self, ack: Ack) -> AgentEvent:
        if self._outstanding is None:
            return self._violated(f"ztunnel sent an unsolicited ack {ack!r}")
        request = self._outstanding.request
        self._outstanding = None
        if isinstance(request, SnapshotSent):
            self._move(_AgentInput.SNAPSHOT_ACKED)
        return AckReceived(request, ack)

    def _violated(self, text: str) -> PeerViolated:
        error = RemoteProtocolError(f"{text} while {self.state.value}")
        self._end()
        return PeerViolated(error)

    def _end(self) -> None:
        self._outstanding = None
        self._move(_AgentInput.ENDED)

    def _move(self, what: _AgentInput) -> None:
        try:
            self.state = _AGENT_TRANSITIONS[(self.state, what)]
        except KeyError:
            raise LocalProtocolError(
                f"ZDS agent: {what.name} not allowed while {self.state.value}"
            ) from None


# --------------------------------------------------------------------------------------------
# ztunnel side


class ZtunnelState(enum.Enum):
    AWAITING_SNAPSHOT = "awaiting snapshot"
    READY = "snapshot received"
    CLOSED = "closed"


_ZTUNNEL_TRANSITIONS: dict[tuple[ZtunnelState, type[WorkloadRequest]], ZtunnelState] = {
    (ZtunnelState.AWAITING_SNAPSHOT, AddWorkload): ZtunnelState.AWAITING_SNAPSHOT,
    (ZtunnelState.AWAITING_SNAPSHOT, KeepWorkload): ZtunnelState.AWAITING_SNAPSHOT,
    (ZtunnelState.AWAITING_SNAPSHOT, DelWorkload): ZtunnelState.AWAITING_SNAPSHOT,
    (ZtunnelState.AWAITING_SNAPSHOT, SnapshotSent): ZtunnelState.READY,
    (ZtunnelState.READY, AddWorkload): ZtunnelState.READY,
    (ZtunnelState.READY, DelWorkload): ZtunnelState.READY,
}
"""What the agent may send in each state; anything else (Keep after SnapshotSent, a second
SnapshotSent, anything after an abort) is a protocol error."""


@dataclass(frozen=True)
class StartProxy:
    """Start (or keep) the proxy of `uid` in the netns of the one fd that came with the record."""

    uid: str
    info: WorkloadInfo


@dataclass(frozen=True)
class DrainProxy:
    uid: str


@dataclass(frozen=True)
class ReconcileProxies:
    """The snapshot is complete: drain every proxy whose uid is not in `keep`."""

    keep: frozenset[str]


@dataclass(frozen=True)
class Acknowledge:
    """Nothing to do but acknowledge (a Keep during the snapshot)."""


@dataclass(frozen=True)
class Abort:
    """The agent broke the protocol: NACK with `reason`, close every fd, drop the connection."""

    reason: str


ZtunnelCommand = StartProxy | DrainProxy | ReconcileProxies | Acknowledge | Abort


class ZtunnelConnection:
    """One ZDS connection as ztunnel sees it. Each `request_received` returns one command; the
    shell performs it and then sends `reply(error)`: exactly one ack per request, nothing else.

    Snapshot semantics (reference 5.3 item 7): an Add or Keep before SnapshotSent records the
    uid, a Del removes it, and SnapshotSent hands the recorded set over in `ReconcileProxies`.
    """

    def __init__(self) -> None:
        self.state = ZtunnelState.AWAITING_SNAPSHOT
        self._snapshot_uids: set[str] = set()
        self._awaiting_reply = False
        self._abort_reason = ""

    def hello(self) -> bytes:
        """The first record to send on a new connection."""
        return encode_hello(Hello(VERSION_V1))

    def request_received(
        self, data: bytes, *, fd_count: int = 0, truncated: bool = False
    ) -> ZtunnelCommand:
        if self._awaiting_reply:
            raise LocalProtocolError("ZDS ztunnel: previous request not replied to yet")
        if self.state is ZtunnelState.CLOSED:
            raise LocalProtocolError("ZDS ztunnel connection is closed: no more requests expected")
        self._awaiting_reply = True
        if truncated:
            return self._abort("truncated ZDS record (over 1024 bytes or too many fds)")
        try:
            request = decode_request(data)
        except ZdsDecodeError as exc:
            return self._abort(str(exc))
        if isinstance(request, AddWorkload):
            if request.info is None:
                return self._abort(f"AddWorkload for {request.uid!r} without workload_info")
            if fd_count != 1:
                return self._abort(f"AddWorkload for {request.uid!r} with {fd_count} fds, not 1")
        elif fd_count:
            return self._abort(f"{fd_count} file descriptor(s) sent with {request!r}")
        next_state = _ZTUNNEL_TRANSITIONS.get((self.state, type(request)))
        if next_state is None:
            return self._abort(f"{request!r} not allowed while {self.state.value}")
        return self._accept(request, next_state)

    def reply(self, error: str = "") -> bytes:
        """The ack for the request last received: `error` empty = success. After an `Abort`
        the NACK carries the abort reason whatever `error` says."""
        if not self._awaiting_reply:
            raise LocalProtocolError("ZDS ztunnel: no request to reply to")
        self._awaiting_reply = False
        return encode_ack(Ack(nack_text(self._abort_reason or error)))

    def _accept(self, request: WorkloadRequest, next_state: ZtunnelState) -> ZtunnelCommand:
        in_snapshot = self.state is ZtunnelState.AWAITING_SNAPSHOT
        self.state = next_state
        match request:
            case AddWorkload(uid=uid, info=WorkloadInfo() as info):
                if in_snapshot:
                    self._snapshot_uids.add(uid)
                return StartProxy(uid, info)
            case KeepWorkload(uid=uid):
                self._snapshot_uids.add(uid)
                return Acknowledge()
            case DelWorkload(uid=uid):
                self._snapshot_uids.discard(uid)
                return DrainProxy(uid)
            case _:
                keep = frozenset(self._snapshot_uids)
                self._snapshot_uids.clear()
                return ReconcileProxies(keep)

    def _abort(self, reason: str) -> Abort:
        self.state = ZtunnelState.CLOSED
        self._abort_reason = f"protocol error: {reason}"
        return Abort(self._abort_reason)
