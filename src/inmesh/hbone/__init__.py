"""HBONE: mutual TLS between proxies (SPIFFE identities) carrying one HTTP/2 CONNECT per tunnel.

Layout: `tls` (contexts, peer identity), `headers` (CONNECT heads), `protocol` (sans-io HTTP/2
connections over h2), `client` (pool) and `server` (one accepted connection) as asyncio shells,
`relay` (socket <-> stream pump). Reference: istio-inpod.md sections 6.3 and 7.
"""

from __future__ import annotations

from inmesh.hbone.client import HbonePool, MakeSocket, PoolKey
from inmesh.hbone.errors import (
    ConnectRejected,
    HboneConnectionError,
    PeerIdentityError,
    StreamResetError,
    UpstreamRefused,
)
from inmesh.hbone.headers import PeerMetadata, Target, forwarded, traceparent
from inmesh.hbone.relay import RelayCounts, relay_socket_stream
from inmesh.hbone.server import ConnectRequest, StreamDone, serve_hbone
from inmesh.hbone.settings import HboneSettings
from inmesh.hbone.stream import HboneStream
from inmesh.hbone.tls import client_context, peer_identity, server_context

__all__ = [
    "ConnectRejected",
    "ConnectRequest",
    "HboneConnectionError",
    "HbonePool",
    "HboneSettings",
    "HboneStream",
    "MakeSocket",
    "PeerIdentityError",
    "PeerMetadata",
    "PoolKey",
    "RelayCounts",
    "StreamDone",
    "StreamResetError",
    "Target",
    "UpstreamRefused",
    "client_context",
    "forwarded",
    "peer_identity",
    "relay_socket_stream",
    "serve_hbone",
    "server_context",
    "traceparent",
]
