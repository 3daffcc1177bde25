"""Sans-io incremental ("delta") xDS: the server side of one ADS stream and the client side.

`DeltaServerStream` takes the client's requests and the current resources of each type and
says which responses to send; `DeltaClient` turns responses into `ResourceUpdate`s and builds
the ACK or NACK. Neither touches a socket, a clock or gRPC: the shells `inmesh.xds.server` and
`inmesh.ztunnel.xdsclient` do. Semantics follow Envoy's xDS protocol doc and Istio:

* Subscriptions per type: wildcard (``*``, or an empty first request: Envoy's "legacy
  wildcard", which is what ztunnel sends) and/or names. `initial_resource_versions` on the first
  request says what the client already has; the first response sends only the difference and
  names in `removed` what the client has but should not (ztunnel sends empty versions: those
  resources are re-sent).
* At most one un-ACKed response per type. Changes that arrive meanwhile are coalesced: the next
  response is computed from the newest resources when the ACK comes, so nothing queues up.
* The server tracks what the client has from ACKs only. A NACK leaves that unchanged, is
  reported as an event (the shell logs it) and keeps the stream; the rejected content is not
  re-sent until the resources change again, so a client cannot be pushed into a NACK loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from inmesh.errors import LocalProtocolError, RemoteProtocolError
from inmesh.xds.messages import WILDCARD, DeltaRequest, DeltaResponse
from inmesh.xds.resources import Resource, Snapshot

__all__ = [
    "Acked",
    "DeltaClient",
    "DeltaServerStream",
    "Nacked",
    "ResourceUpdate",
    "ServerEvent",
    "ServerLimits",
    "StaleNonce",
    "Subscribed",
    "apply_update",
]

_EMPTY_SNAPSHOT = Snapshot()

# --------------------------------------------------------------------------------------------
# Server side


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client may make a stream hold."""

    max_types: int = 16
    """Resource types one stream may subscribe to. Istio's ztunnel uses two; the bound only stops
    a client from making us keep state for arbitrary type URLs."""

    max_names: int = 100_000
    """Explicitly named subscriptions plus initial resource versions per type. A node proxy
    subscribes by wildcard; this is far above any named use and bounds memory per stream."""


@dataclass(frozen=True)
class Subscribed:
    """The client's first request for a type (what it asked for and already has)."""

    type_url: str
    wildcard: bool
    names: frozenset[str]
    known: int


@dataclass(frozen=True)
class Acked:
    type_url: str
    nonce: str


@dataclass(frozen=True)
class Nacked:
    """The client rejected a response; its state is taken to be what it last ACKed."""

    type_url: str
    nonce: str
    error: str


@dataclass(frozen=True)
class StaleNonce:
    """An ACK or NACK of a response that is not the one in flight (ignored, as Envoy does)."""

    type_url: str
    nonce: str


ServerEvent = Subscribed | Acked | Nacked | StaleNonce


@dataclass(frozen=True)
class _InFlight:
    nonce: str
    sent: Mapping[str, str | None]
    """Name -> version sent, or None for a name sent as removed."""


@dataclass
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    client_has: dict[str, str] = field(default_factory=dict)
    """Name -> version the client holds, from its initial versions and our ACKed responses."""
    in_flight: _InFlight | None = None
    dirty: bool = True
    """The resources or the subscription changed since the last response was computed."""
    must_respond: bool = True
    """A subscription request awaits an answer, even an empty one (clients wait for it)."""
    report_missing: set[str] = field(default_factory=set)
    """Newly named subscriptions; those that do not exist are answered in `removed`."""
    acked_once: bool = False
    """The client ACKed a response of this type. Until then even an empty difference is
    sent (after a NACKed first response, with the next change), so that it can sync."""

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaServerStream:
    """The control plane's side of one DeltaAggregatedResources stream.

    Feed it `request_received` and `resources_changed`; after each, send every response
    `responses_to_send` returns, in order.
    """

    def __init__(
        self,
        snapshots: Mapping[str, Snapshot] | None = None,
        limits: ServerLimits = ServerLimits(),
    ) -> None:
        self._snapshots: dict[str, Snapshot] = dict(snapshots or {})
        self._limits = limits
        self._types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)
        self.node_id = ""

    @property
    def type_urls(self) -> tuple[str, ...]:
        return tuple(self._types)

    def client_versions(self, type_url: str) -> Mapping[str, str]:
        """What we believe the client holds of `type_url` (for tests and debugging)."""
        state = self._types.get(type_url)
        return MappingProxyType(dict(state.client_has) if state else {})

    def request_received(self, req: DeltaRequest) -> list[ServerEvent]:
        """Take one request; raises RemoteProtocolError if it breaks a limit."""
        if req.node_id and not self.node_id:
            self.node_id = req.node_id
        events: list[ServerEvent] = []
        state = self._types.get(req.type_url)
        if state is None:
            state = self._open(req)
            names, known = frozenset(state.names), len(state.client_has)
            events.append(Subscribed(req.type_url, state.wildcard, names, known))
        else:
            self._change_subscription(req.type_url, state, req)
        if req.response_nonce:
            events.append(self._settle(req.type_url, state, req))
        return events

    def resources_changed(self, type_url: str, snapshot: Snapshot) -> None:
        self._snapshots[type_url] = snapshot
        if type_url in self._types:
            self._types[type_url].dirty = True

    def responses_to_send(self) -> list[DeltaResponse]:
        """One response per type that has something to say and no response in flight."""
        out = []
        for type_url, state in self._types.items():
            if state.in_flight is None and (state.dirty or state.must_respond):
                resp = self._next_response(type_url, state)
                if resp is not None:
                    out.append(resp)
        return out

    def _open(self, req: DeltaRequest) -> _TypeState:
        if len(self._types) >= self._limits.max_types:
            raise RemoteProtocolError(
                f"client subscribed to more than {self._limits.max_types} xDS types"
            )
        state = _TypeState(wildcard=not req.subscribe)
        self._types[req.type_url] = state
        self._change_subscription(req.type_url, state, req)
        self._check_size(req.type_url, len(req.initial_versions))
        state.client_has = {n: v for n, v in req.initial_versions.items() if state.wants(n)}
        state.must_respond = True
        return state

    def _change_subscription(self, type_url: str, state: _TypeState, req: DeltaRequest) -> None:
        for name in req.subscribe:
            if name == WILDCARD:
                state.wildcard = True
            elif name not in state.names:
                state.names.add(name)
                state.report_missing.add(name)
        for name in req.unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
            else:
                state.names.discard(name)
                state.report_missing.discard(name)
        self._check_size(type_url, len(state.names))
        # The client drops what it unsubscribed from by itself: forget it.
        state.client_has = {n: v for n, v in state.client_has.items() if state.wants(n)}
        if req.subscribe or req.unsubscribe:
            state.dirty = True
        if req.subscribe:
            state.must_respond = True

    def _check_size(self, type_url: str, count: int) -> None:
        if count > self._limits.max_names:
            raise RemoteProtocolError(
                f"client named {count} {type_url} resources, more than {self._limits.max_names}"
            )

    def _settle(self, type_url: str, state: _TypeState, req: DeltaRequest) -> ServerEvent:
        flight = state.in_flight
        if flight is None or flight.nonce != req.response_nonce:
            return StaleNonce(type_url, req.response_nonce)
        state.in_flight = None
        if req.error is not None:
            return Nacked(type_url, flight.nonce, req.error)
        state.acked_once = True
        for name, version in flight.sent.items():
            if version is None:
                state.client_has.pop(name, None)
            elif state.wants(name):
                state.client_has[name] = version
        return Acked(type_url, flight.nonce)

    def _next_response(self, type_url: str, state: _TypeState) -> DeltaResponse | None:
        resources = self._snapshots.get(type_url, _EMPTY_SNAPSHOT).resources
        changed = sorted(
            (
                r
                for n, r in resources.items()
                if state.wants(n) and state.client_has.get(n) != r.version
            ),
            key=lambda r: r.name,
        )
        removed = {n for n in state.client_has if n not in resources}
        removed |= {n for n in state.report_missing if n not in resources and state.wants(n)}
        must_respond = state.must_respond
        state.dirty = state.must_respond = False
        state.report_missing.clear()
        if not changed and not removed and not must_respond and state.acked_once:
            return None
        nonce = str(next(self._nonces))
        sent: dict[str, str | None] = {r.name: r.version for r in changed}
        sent.update(dict.fromkeys(removed))
        state.in_flight = _InFlight(nonce, MappingProxyType(sent))
        return DeltaResponse(type_url, nonce, tuple(changed), tuple(sorted(removed)))


# --------------------------------------------------------------------------------------------
# Client side


@dataclass(frozen=True)
class ResourceUpdate:
    """One response, checked: apply `added` and `removed` to the local state, then ACK it."""

    type_url: str
    nonce: str
    added: Mapping[str, Resource]
    removed: frozenset[str]

    def __repr__(self) -> str:
        return (
            f"ResourceUpdate({self.type_url!r}, nonce={self.nonce!r},"
            f" added={sorted(self.added)}, removed={sorted(self.removed)})"
        )


class DeltaClient:
    """A node proxy's side: wildcard subscriptions to `type_urls`, across reconnects.

    The versions of what was ACKed survive a reconnect and go out as the new stream's
    `initial_resource_versions`, so the server sends only what changed meanwhile.
    """

    def __init__(self, node_id: str, type_urls: Sequence[str]) -> None:
        if not type_urls:
            raise LocalProtocolError("a delta xDS client needs at least one type to subscribe to")
        self.node_id = node_id
        self._versions: dict[str, dict[str, str]] = {t: {} for t in type_urls}
        self._synced: set[str] = set()

    @property
    def synced(self) -> bool:
        """Every type has had a response applied (ever; a reconnect keeps the applied state)."""
        return self._synced == set(self._versions)

    def versions(self, type_url: str) -> Mapping[str, str]:
        return MappingProxyType(dict(self._versions[type_url]))

    def initial_requests(self) -> list[DeltaRequest]:
        """The requests that open a new stream: one legacy-wildcard subscription per type.

        Empty `subscribe` (Envoy's legacy wildcard) is exactly what Istio's ztunnel sends, so
        istiod and our server treat us alike; the node id goes on each, as ztunnel does."""
        return [
            DeltaRequest(
                type_url=t,
                initial_versions=MappingProxyType(dict(v)),
                node_id=self.node_id,
            )
            for t, v in self._versions.items()
        ]

    def response_received(self, resp: DeltaResponse) -> ResourceUpdate:
        """Check a response; raises RemoteProtocolError (then NACK it with `nack`)."""
        if resp.type_url not in self._versions:
            raise RemoteProtocolError(f"response for {resp.type_url!r}, which we did not subscribe")
        if not resp.nonce:
            raise RemoteProtocolError(f"{resp.type_url} response without a nonce")
        added: dict[str, Resource] = {}
        for r in resp.resources:
            if not r.name or r.name in added:
                raise RemoteProtocolError(
                    f"{resp.type_url} response names {r.name!r} twice or empty"
                )
            added[r.name] = r
        removed = frozenset(resp.removed)
        if both := removed & added.keys():
            raise RemoteProtocolError(f"{resp.type_url} response adds and removes {sorted(both)}")
        return ResourceUpdate(resp.type_url, resp.nonce, MappingProxyType(added), removed)

    def ack(self, update: ResourceUpdate) -> DeltaRequest:
        """The update was applied: remember its versions and build the ACK."""
        versions = self._versions[update.type_url]
        for name in update.removed:
            versions.pop(name, None)
        versions.update({name: r.version for name, r in update.added.items()})
        self._synced.add(update.type_url)
        return DeltaRequest(type_url=update.type_url, response_nonce=update.nonce)

    def nack(self, type_url: str, nonce: str, error: str) -> DeltaRequest:
        """The response was rejected as a whole: nothing of it was applied."""
        return DeltaRequest(type_url=type_url, response_nonce=nonce, error=error or "rejected")


def apply_update(table: dict[str, Resource], update: ResourceUpdate) -> None:
    """Apply `update` to a plain name -> resource table (the reference semantics)."""
    for name in update.removed:
        table.pop(name, None)
    table.update(update.added)
