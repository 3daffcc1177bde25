"""Delta xDS requests and responses as frozen values, and their envoy protobuf encodings.

`DeltaRequest`/`DeltaResponse` carry exactly what the delta protocol logic (`inmesh.xds.delta`)
reads; the `*_to_proto`/`*_from_proto` functions map them onto
`envoy.service.discovery.v3.DeltaDiscoveryRequest`/`DeltaDiscoveryResponse`. Decoding a peer's
message raises only `RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from inmesh.errors import RemoteProtocolError
from inmesh.xds.resources import Resource

WILDCARD = "*"
"""The resource name that subscribes to every resource of a type."""

_NACK_STATUS_CODE = 3
"""google.rpc.Code INVALID_ARGUMENT: what Envoy and ztunnel put in a NACK's error_detail."""

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class DeltaRequest:
    """Client to server: subscription changes and/or the ACK (or NACK) of one response."""

    type_url: str
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    """Only meaningful on the first request of a type on a stream: what the client already has."""
    response_nonce: str = ""
    error: str | None = None
    """Set on a NACK: why the client rejected the response `response_nonce`."""
    node_id: str = ""
    """Sent on the first request of a stream only."""

    @property
    def is_nack(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class DeltaResponse:
    """Server to client: resources added or changed, names removed, and the nonce to ACK."""

    type_url: str
    nonce: str
    resources: tuple[Resource, ...] = ()
    removed: tuple[str, ...] = ()


def request_to_proto(req: DeltaRequest) -> Any:
    msg = discovery_pb2.DeltaDiscoveryRequest(
        type_url=req.type_url,
        resource_names_subscribe=list(req.subscribe),
        resource_names_unsubscribe=list(req.unsubscribe),
        initial_resource_versions=dict(req.initial_versions),
        response_nonce=req.response_nonce,
    )
    if req.node_id:
        msg.node.id = req.node_id
    if req.error is not None:
        msg.error_detail.code = _NACK_STATUS_CODE
        msg.error_detail.message = req.error
    return msg


def request_from_proto(msg: Any) -> DeltaRequest:
    if not msg.type_url:
        raise RemoteProtocolError("delta xDS request without type_url")
    return DeltaRequest(
        type_url=msg.type_url,
        subscribe=tuple(msg.resource_names_subscribe),
        unsubscribe=tuple(msg.resource_names_unsubscribe),
        initial_versions=MappingProxyType(dict(msg.initial_resource_versions)),
        response_nonce=msg.response_nonce,
        error=(msg.error_detail.message or "(no detail)") if msg.HasField("error_detail") else None,
        node_id=msg.node.id if msg.HasField("node") else "",
    )


def response_to_proto(resp: DeltaResponse) -> Any:
    msg = discovery_pb2.DeltaDiscoveryResponse(
        type_url=resp.type_url, nonce=resp.nonce, removed_resources=list(resp.removed)
    )
    for r in resp.resources:
        res = msg.resources.add(name=r.name, version=r.version)
        res.resource.type_url = resp.type_url
        res.resource.value = r.body
    return msg


def response_from_proto(msg: Any) -> DeltaResponse:
    resources = []
    for res in msg.resources:
        if not res.HasField("resource"):
            raise RemoteProtocolError(f"delta xDS resource {res.name!r} has no body")
        if res.resource.type_url != msg.type_url:
            raise RemoteProtocolError(
                f"delta xDS resource {res.name!r} is a {res.resource.type_url!r}"
                f" in a response of type {msg.type_url!r}"
            )
        resources.append(Resource(res.name, res.version, res.resource.value))
    return DeltaResponse(
        type_url=msg.type_url,
        nonce=msg.nonce,
        resources=tuple(resources),
        removed=tuple(msg.removed_resources),
    )
