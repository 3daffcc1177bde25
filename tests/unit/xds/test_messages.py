"""Delta requests/responses map onto envoy's DeltaDiscovery* messages and back, and a peer's
malformed message raises only RemoteProtocolError."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import RemoteProtocolError
from inmesh.xds.messages import (
    DeltaRequest,
    DeltaResponse,
    request_from_proto,
    request_to_proto,
    response_from_proto,
    response_to_proto,
)
from inmesh.xds.resources import ADDRESS_TYPE_URL, Resource

names = st.text(min_size=1, max_size=12)
requests = st.builds(
    DeltaRequest,
    type_url=st.sampled_from([ADDRESS_TYPE_URL, "type.googleapis.com/x.Y"]),
    subscribe=st.lists(names, max_size=4).map(tuple),
    unsubscribe=st.lists(names, max_size=4).map(tuple),
    initial_versions=st.dictionaries(names, st.text(max_size=8), max_size=4).map(MappingProxyType),
    response_nonce=st.text(max_size=6),
    error=st.none() | st.text(min_size=1, max_size=20),
    node_id=st.text(max_size=10),
)
responses = st.builds(
    DeltaResponse,
    type_url=st.just(ADDRESS_TYPE_URL),
    nonce=st.text(min_size=1, max_size=6),
    resources=st.lists(
        st.builds(Resource, names, st.text(max_size=8), st.binary(max_size=16)), max_size=4
    ).map(tuple),
    removed=st.lists(names, max_size=4).map(tuple),
)


@given(requests)
def test_request_round_trips_through_the_wire(req: DeltaRequest) -> None:
    wire = request_to_proto(req).SerializeToString()
    assert request_from_proto(discovery_pb2.DeltaDiscoveryRequest.FromString(wire)) == req


@given(responses)
def test_response_round_trips_through_the_wire(resp: DeltaResponse) -> None:
    wire = response_to_proto(resp).SerializeToString()
    assert response_from_proto(discovery_pb2.DeltaDiscoveryResponse.FromString(wire)) == resp


def test_nack_carries_invalid_argument_and_the_reason() -> None:
    msg = request_to_proto(DeltaRequest(ADDRESS_TYPE_URL, response_nonce="3", error="bad ip"))
    assert (msg.error_detail.code, msg.error_detail.message) == (3, "bad ip")
    assert msg.response_nonce == "3"
    assert not msg.HasField("node")


def test_ack_has_no_error_detail_and_node_only_when_given() -> None:
    msg = request_to_proto(DeltaRequest(ADDRESS_TYPE_URL, node_id="n1"))
    assert not msg.HasField("error_detail")
    assert msg.node.id == "n1"
    assert not request_from_proto(msg).is_nack


def test_nack_with_empty_message_is_still_a_nack() -> None:
    """ztunnel may NACK with a Status whose message is empty; it must not read as an ACK."""
    msg = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE_URL, response_nonce="1")
    msg.error_detail.code = 13
    assert request_from_proto(msg).error == "(no detail)"


def test_request_without_type_url_is_the_peers_fault() -> None:
    with pytest.raises(RemoteProtocolError, match="type_url"):
        request_from_proto(discovery_pb2.DeltaDiscoveryRequest())


def test_resource_of_another_type_in_a_response_is_rejected() -> None:
    msg = response_to_proto(DeltaResponse(ADDRESS_TYPE_URL, "1", (Resource("a", "v", b""),)))
    msg.resources[0].resource.type_url = "type.googleapis.com/other"
    with pytest.raises(RemoteProtocolError, match="other"):
        response_from_proto(msg)


def test_resource_without_body_is_rejected() -> None:
    msg = discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS_TYPE_URL, nonce="1")
    msg.resources.add(name="a", version="v")
    with pytest.raises(RemoteProtocolError, match="no body"):
        response_from_proto(msg)


@given(st.binary(max_size=64))
def test_arbitrary_response_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    """Bytes that parse as a response decode or raise RemoteProtocolError, nothing else."""
    try:
        msg = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
    except DecodeError:  # not a protobuf at all: grpc's deserializer rejects it first
        return
    try:
        resp = response_from_proto(msg)
    except RemoteProtocolError:
        return
    assert resp.type_url == msg.type_url
