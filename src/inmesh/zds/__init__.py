"""ZDS, the protocol between the node agent (server) and ztunnel (client), wire-compatible with
Istio's zds.proto.

Layout: `messages` (dataclasses and byte encodings) and `protocol` (connection state machines)
are sans-io; `server` (agent side) and `client` (ztunnel side) are the asyncio shells over an
AF_UNIX SOCK_SEQPACKET socket. Import the shells from their modules; this package exports the
vocabulary both sides share.
"""

from inmesh.zds.errors import ZdsNacked, ZdsNotConnected, ZdsTimeout
from inmesh.zds.messages import MAX_RECORD, WorkloadInfo, ZdsDecodeError

__all__ = [
    "MAX_RECORD",
    "WorkloadInfo",
    "ZdsDecodeError",
    "ZdsNacked",
    "ZdsNotConnected",
    "ZdsTimeout",
]
