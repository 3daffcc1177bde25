"""Incremental xDS (Envoy's delta ADS) carrying Istio's `istio.workload.Address` resources.

Layout: `proto` (the `istio.workload` schema subset, generated code committed), `resources`
(resources and snapshots as values), `messages` (delta requests/responses and their envoy
protobuf encodings) and `delta` (the server-stream and client state machines) are sans-io;
`server` is the control plane's grpc.aio shell. The node proxy's shell is
`inmesh.ztunnel.xdsclient`. This package exports the shared vocabulary; import shells from
their modules.
"""

from inmesh.xds.messages import WILDCARD, DeltaRequest, DeltaResponse
from inmesh.xds.resources import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    Resource,
    Snapshot,
    address_resource,
    content_version,
)

__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "WILDCARD",
    "DeltaRequest",
    "DeltaResponse",
    "Resource",
    "Snapshot",
    "address_resource",
    "content_version",
]
