"""The sans-io delta xDS server stream and client, each alone and against each other in memory."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from inmesh.errors import LocalProtocolError, RemoteProtocolError
from inmesh.xds.delta import (
    Acked,
    DeltaClient,
    DeltaServerStream,
    Nacked,
    ResourceUpdate,
    ServerLimits,
    StaleNonce,
    Subscribed,
    apply_update,
)
from inmesh.xds.messages import (
    WILDCARD,
    DeltaRequest,
    DeltaResponse,
    request_from_proto,
    request_to_proto,
    response_from_proto,
    response_to_proto,
)
from inmesh.xds.resources import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    Resource,
    Snapshot,
    content_version,
)

A = ADDRESS_TYPE_URL


def res(name: str, body: bytes = b"1") -> Resource:
    return Resource(name, content_version(body), body)


def snap(generation: int, *resources: Resource) -> Snapshot:
    return Snapshot.of(generation, resources)


def opened(snapshot: Snapshot, first: DeltaRequest) -> tuple[DeltaServerStream, DeltaResponse]:
    stream = DeltaServerStream({A: snapshot})
    stream.request_received(first)
    (resp,) = stream.responses_to_send()
    return stream, resp


def ack(resp: DeltaResponse) -> DeltaRequest:
    return DeltaRequest(resp.type_url, response_nonce=resp.nonce)


def names(resp: DeltaResponse) -> list[str]:
    return [r.name for r in resp.resources]


# --------------------------------------------------------------------------------------------
# Server stream


def test_first_wildcard_request_gets_full_state_then_nothing_until_acked() -> None:
    stream = DeltaServerStream({A: snap(1, res("b"), res("a"))})
    events = stream.request_received(DeltaRequest(A, node_id="ztunnel~n1"))
    assert events == [Subscribed(A, wildcard=True, names=frozenset(), known=0)]
    assert stream.node_id == "ztunnel~n1"
    (resp,) = stream.responses_to_send()
    assert (resp.type_url, resp.nonce, names(resp), resp.removed) == (A, "1", ["a", "b"], ())
    assert stream.responses_to_send() == []
    assert stream.request_received(ack(resp)) == [Acked(A, "1")]
    assert stream.client_versions(A) == {"a": res("a").version, "b": res("b").version}
    assert stream.responses_to_send() == []


def test_empty_state_still_gets_an_empty_first_response() -> None:
    """Clients count a type as synced on its first response, so it is sent even when empty."""
    _, resp = opened(Snapshot(), DeltaRequest(A))
    assert (resp.resources, resp.removed) == ((), ())


def test_initial_versions_skip_what_the_client_has_and_remove_what_is_gone() -> None:
    first = DeltaRequest(
        A, initial_versions=MappingProxyType({"a": res("a").version, "b": "old", "gone": "x"})
    )
    _, resp = opened(snap(1, res("a"), res("b"), res("c")), first)
    assert names(resp) == ["b", "c"]
    assert resp.removed == ("gone",)


def test_ztunnel_style_empty_versions_are_all_resent() -> None:
    """ztunnel reconnects with every known name at version "" (it keeps no versions)."""
    _, resp = opened(
        snap(1, res("a"), res("b")), DeltaRequest(A, initial_versions=MappingProxyType({"a": ""}))
    )
    assert names(resp) == ["a", "b"]


def test_changes_while_unacked_are_coalesced_into_one_response() -> None:
    stream, first = opened(snap(1, res("a"), res("b")), DeltaRequest(A))
    stream.resources_changed(A, snap(2, res("a"), res("b"), res("c", b"1")))
    stream.resources_changed(A, snap(3, res("b"), res("c", b"2")))
    assert stream.responses_to_send() == []
    stream.request_received(ack(first))
    (resp,) = stream.responses_to_send()
    assert resp.resources == (res("c", b"2"),)
    assert resp.removed == ("a",)


def test_ack_with_nothing_changed_sends_nothing() -> None:
    stream, first = opened(snap(1, res("a")), DeltaRequest(A))
    stream.resources_changed(A, snap(2, res("a")))
    stream.request_received(ack(first))
    assert stream.responses_to_send() == []


def test_nack_keeps_the_stream_and_is_not_retried_until_something_changes() -> None:
    stream, first = opened(snap(1, res("a"), res("bad")), DeltaRequest(A))
    events = stream.request_received(DeltaRequest(A, response_nonce=first.nonce, error="no"))
    assert events == [Nacked(A, first.nonce, "no")]
    assert stream.client_versions(A) == {}
    assert stream.responses_to_send() == []
    stream.resources_changed(A, snap(2, res("a")))
    (resp,) = stream.responses_to_send()
    assert (names(resp), resp.removed) == (["a"], ())


def test_nacked_first_response_is_followed_by_an_empty_one_once_the_bad_resource_goes() -> None:
    """A client that rejected its first response must still get to sync: when the state
    changes to one equal to what it has (nothing), it gets an empty response to ACK."""
    stream, first = opened(snap(1, res("bad")), DeltaRequest(A))
    stream.request_received(DeltaRequest(A, response_nonce=first.nonce, error="no"))
    stream.resources_changed(A, snap(2))
    (resp,) = stream.responses_to_send()
    assert (resp.resources, resp.removed) == ((), ())
    stream.request_received(ack(resp))
    stream.resources_changed(A, snap(3))
    assert stream.responses_to_send() == []


def test_ack_of_another_nonce_is_ignored_and_keeps_the_response_in_flight() -> None:
    stream, first = opened(snap(1, res("a")), DeltaRequest(A))
    assert stream.request_received(DeltaRequest(A, response_nonce="99")) == [StaleNonce(A, "99")]
    stream.resources_changed(A, snap(2, res("b")))
    assert stream.responses_to_send() == []
    stream.request_received(ack(first))
    (resp,) = stream.responses_to_send()
    assert (names(resp), resp.removed) == (["b"], ("a",))


def test_removed_resource_is_announced_after_the_ack() -> None:
    stream, first = opened(snap(1, res("a"), res("b")), DeltaRequest(A))
    stream.request_received(ack(first))
    stream.resources_changed(A, snap(2, res("b")))
    (resp,) = stream.responses_to_send()
    assert (resp.resources, resp.removed) == ((), ("a",))
    stream.request_received(ack(resp))
    assert set(stream.client_versions(A)) == {"b"}


def test_named_subscription_gets_those_names_and_missing_ones_as_removed() -> None:
    stream, resp = opened(snap(1, res("a"), res("b")), DeltaRequest(A, subscribe=("a", "zz")))
    assert (names(resp), resp.removed) == (["a"], ("zz",))
    stream.request_received(ack(resp))
    stream.request_received(DeltaRequest(A, subscribe=("b",)))
    (more,) = stream.responses_to_send()
    assert (names(more), more.removed) == (["b"], ())


def test_unsubscribed_name_is_forgotten_and_its_changes_not_sent() -> None:
    stream, resp = opened(snap(1, res("a"), res("b")), DeltaRequest(A, subscribe=("a", "b")))
    stream.request_received(ack(resp))
    stream.request_received(DeltaRequest(A, unsubscribe=("a",)))
    assert stream.responses_to_send() == []
    assert set(stream.client_versions(A)) == {"b"}
    stream.resources_changed(A, snap(2, res("a", b"2"), res("b")))
    assert stream.responses_to_send() == []


def test_ztunnel_on_demand_start_subscribes_to_nothing_but_is_answered() -> None:
    """ztunnel's on-demand mode subscribes and unsubscribes * in one request (reference 6.5)."""
    _, resp = opened(snap(1, res("a")), DeltaRequest(A, subscribe=(WILDCARD,), unsubscribe=(WILDCARD,)))
    assert (resp.resources, resp.removed) == ((), ())


def test_explicit_wildcard_alongside_names_gets_everything() -> None:
    _, resp = opened(snap(1, res("a"), res("b")), DeltaRequest(A, subscribe=("a", WILDCARD)))
    assert names(resp) == ["a", "b"]


def test_ack_and_subscription_change_in_one_request() -> None:
    stream, resp = opened(snap(1, res("a"), res("b")), DeltaRequest(A, subscribe=("a",)))
    events = stream.request_received(
        DeltaRequest(A, subscribe=("b",), response_nonce=resp.nonce)
    )
    assert events == [Acked(A, resp.nonce)]
    (more,) = stream.responses_to_send()
    assert names(more) == ["b"]


def test_types_without_resources_are_served_empty_and_independently() -> None:
    """ztunnel also subscribes to Authorization and waits for it; inmesh has no policies."""
    stream = DeltaServerStream({A: snap(1, res("a"))})
    stream.request_received(DeltaRequest(A, node_id="n"))
    stream.request_received(DeltaRequest(AUTHORIZATION_TYPE_URL))
    addresses, policies = stream.responses_to_send()
    assert (addresses.type_url, names(addresses)) == (A, ["a"])
    assert (policies.type_url, policies.resources) == (AUTHORIZATION_TYPE_URL, ())
    assert addresses.nonce != policies.nonce
    assert stream.type_urls == (A, AUTHORIZATION_TYPE_URL)


def test_too_many_types_or_names_is_the_clients_fault() -> None:
    stream = DeltaServerStream(limits=ServerLimits(max_types=1, max_names=2))
    stream.request_received(DeltaRequest(A))
    with pytest.raises(RemoteProtocolError, match="more than 1"):
        stream.request_received(DeltaRequest(AUTHORIZATION_TYPE_URL))
    with pytest.raises(RemoteProtocolError, match="3"):
        stream.request_received(DeltaRequest(A, subscribe=("a", "b", "c")))
    versions = MappingProxyType({"a": "", "b": "", "c": ""})
    with pytest.raises(RemoteProtocolError, match="3"):
        DeltaServerStream(limits=ServerLimits(max_names=2)).request_received(
            DeltaRequest(A, initial_versions=versions)
        )


# --------------------------------------------------------------------------------------------
# Client


def test_client_opens_with_legacy_wildcard_and_node_id_like_ztunnel() -> None:
    client = DeltaClient("ztunnel~n1", [A])
    (req,) = client.initial_requests()
    assert req == DeltaRequest(A, node_id="ztunnel~n1")
    assert not client.synced


def test_client_resubscribes_with_the_versions_it_acked() -> None:
    client = DeltaClient("n", [A])
    update = client.response_received(DeltaResponse(A, "1", (res("a"), res("b"))))
    assert client.ack(update) == DeltaRequest(A, response_nonce="1")
    assert client.synced
    update = client.response_received(DeltaResponse(A, "2", (res("b", b"2"),), ("a",)))
    client.ack(update)
    (req,) = client.initial_requests()
    assert dict(req.initial_versions) == {"b": res("b", b"2").version}


def test_client_nack_changes_nothing_and_does_not_count_as_synced() -> None:
    client = DeltaClient("n", [A])
    client.response_received(DeltaResponse(A, "1", (res("a"),)))
    assert client.nack(A, "1", "bad") == DeltaRequest(A, response_nonce="1", error="bad")
    assert client.versions(A) == {}
    assert not client.synced


def test_client_is_synced_only_when_every_type_was_answered() -> None:
    client = DeltaClient("n", [A, AUTHORIZATION_TYPE_URL])
    first, second = client.initial_requests()
    assert (first.node_id, second.node_id) == ("n", "n")
    client.ack(client.response_received(DeltaResponse(A, "1")))
    assert not client.synced
    client.ack(client.response_received(DeltaResponse(AUTHORIZATION_TYPE_URL, "2")))
    assert client.synced


@pytest.mark.parametrize(
    ("resp", "match"),
    [
        (DeltaResponse("type.googleapis.com/other", "1"), "did not subscribe"),
        (DeltaResponse(A, ""), "without a nonce"),
        (DeltaResponse(A, "1", (res("a"), res("a", b"2"))), "twice"),
        (DeltaResponse(A, "1", (res(""),)), "empty"),
        (DeltaResponse(A, "1", (res("a"),), ("a",)), "adds and removes"),
    ],
)
def test_client_rejects_malformed_responses(resp: DeltaResponse, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        DeltaClient("n", [A]).response_received(resp)


def test_client_needs_a_type() -> None:
    with pytest.raises(LocalProtocolError):
        DeltaClient("n", [])


def test_update_repr_lists_names_not_bodies() -> None:
    update = ResourceUpdate(A, "1", MappingProxyType({"a": res("a", b"secret")}), frozenset({"b"}))
    assert "secret" not in repr(update)
    assert "['a']" in repr(update)


# --------------------------------------------------------------------------------------------
# Client against server, over the envoy wire encoding, under arbitrary change sequences

BAD = b"bad"
"""A body the simulated proxy rejects (NACKs), standing for a resource it cannot use."""

_bodies = st.sampled_from([b"1", b"2", b"3", BAD])
_states = st.dictionaries(st.sampled_from("abcde"), _bodies, max_size=5)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("change"), _states),
        st.tuples(st.sampled_from(["to_server", "to_client", "reconnect", "drain"]), st.none()),
    ),
    max_size=40,
)


def _wire_request(req: DeltaRequest) -> DeltaRequest:
    raw = request_to_proto(req).SerializeToString()
    return request_from_proto(discovery_pb2.DeltaDiscoveryRequest.FromString(raw))


def _wire_response(resp: DeltaResponse) -> DeltaResponse:
    raw = response_to_proto(resp).SerializeToString()
    return response_from_proto(discovery_pb2.DeltaDiscoveryResponse.FromString(raw))


@dataclass
class Mesh:
    """One server stream and one client joined by two in-order queues (a gRPC stream)."""

    current: Snapshot = field(default_factory=Snapshot)
    client: DeltaClient = field(default_factory=lambda: DeltaClient("n", [A]))
    table: dict[str, Resource] = field(default_factory=dict)
    server: DeltaServerStream = field(default_factory=DeltaServerStream)
    to_server: deque[DeltaRequest] = field(default_factory=deque)
    to_client: deque[DeltaResponse] = field(default_factory=deque)
    nacks: int = 0

    def reconnect(self) -> None:
        self.server = DeltaServerStream({A: self.current})
        self.to_server = deque(self.client.initial_requests())
        self.to_client = deque()

    def change(self, state: dict[str, bytes]) -> None:
        self.current = snap(self.current.generation + 1, *(res(n, b) for n, b in state.items()))
        self.server.resources_changed(A, self.current)
        self._pump()

    def _pump(self) -> None:
        self.to_client.extend(self.server.responses_to_send())
        assert len(self.to_client) <= 1, "more than one un-ACKed response of a type"

    def step_server(self) -> None:
        if self.to_server:
            self.server.request_received(_wire_request(self.to_server.popleft()))
            self._pump()

    def step_client(self) -> None:
        if not self.to_client:
            return
        resp = _wire_response(self.to_client.popleft())
        update = self.client.response_received(resp)
        if any(r.body == BAD for r in update.added.values()):
            self.nacks += 1
            self.to_server.append(self.client.nack(resp.type_url, resp.nonce, "bad body"))
        else:
            apply_update(self.table, update)
            self.to_server.append(self.client.ack(update))

    def drain(self) -> None:
        for _ in range(100):
            if not self.to_server and not self.to_client:
                return
            self.step_server()
            self.step_client()
        raise AssertionError("client and server never went quiet")

    def assert_converged(self) -> None:
        assert self.table == dict(self.current.resources)
        assert self.client.versions(A) == self.current.versions()
        assert self.server.client_versions(A) == self.current.versions()
        assert self.client.synced


def _good(state: dict[str, bytes]) -> bool:
    return BAD not in state.values()


@settings(max_examples=300, deadline=None)
@given(_states, _ops, _states.filter(_good))
def test_client_table_converges_to_server_state(
    initial: dict[str, bytes], ops: list[tuple[str, dict[str, bytes] | None]], final: dict[str, bytes]
) -> None:
    """Whatever the interleaving of changes, deliveries, reconnects and NACKs, once the last
    change is usable and the stream goes quiet, the client holds exactly the server's state,
    and the server never has more than one response of a type in flight."""
    mesh = Mesh()
    mesh.change(initial)
    mesh.reconnect()
    for op, state in ops:
        if op == "change":
            assert state is not None
            mesh.change(state)
        elif op == "to_server":
            mesh.step_server()
        elif op == "to_client":
            mesh.step_client()
        elif op == "reconnect":
            mesh.reconnect()
        else:
            mesh.drain()
            if all(r.body != BAD for r in mesh.current.resources.values()):
                mesh.assert_converged()
    mesh.change(final)
    mesh.drain()
    mesh.assert_converged()


@given(st.lists(_states.filter(_good), min_size=1, max_size=8))
def test_reconnect_after_changes_sends_only_the_difference(states: list[dict[str, bytes]]) -> None:
    """A proxy that was synced, then offline through several changes, gets on reconnect exactly
    the resources whose content differs and the names that are gone."""
    mesh = Mesh()
    mesh.change(states[0])
    mesh.reconnect()
    mesh.drain()
    before = dict(mesh.table)
    for state in states[1:]:
        mesh.current = snap(mesh.current.generation + 1, *(res(n, b) for n, b in state.items()))
    mesh.reconnect()
    mesh.step_server()
    (resp,) = mesh.to_client
    now = dict(mesh.current.resources)
    assert {r.name for r in resp.resources} == {n for n, r in now.items() if before.get(n) != r}
    assert set(resp.removed) == set(before) - set(now)
    mesh.drain()
    mesh.assert_converged()
