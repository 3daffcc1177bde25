"""ztunnel: the per-node proxy that listens inside each enrolled pod's network namespace.

Layout: `addressing` (pure address logic), `sockets` (in-pod socket factory), `relay` (the byte
hot path), `proxy` (one pod's listeners and connections), `manager` (which pods have a proxy;
the ZDS handler), `metrics`, `admin` (HTTP endpoints), `settings`, and `app` (the process).
Mesh (with a control plane): `workloads` + `xdsclient` (what xDS says), `certs` (the pods'
certificates), `routing` (pure HBONE/passthrough and identity decisions), `mesh` (what the pod
proxies share), `tunnels` (one pod's HBONE client and server), `meshlink` (the control-plane
connections of the process).
"""

from inmesh.ztunnel.app import run, serve
from inmesh.ztunnel.manager import WorkloadManager, WorkloadState
from inmesh.ztunnel.mesh import Mesh
from inmesh.ztunnel.meshlink import MeshLink
from inmesh.ztunnel.metrics import PeerLabels, TrafficLabels, ZtunnelMetrics, connection_labels
from inmesh.ztunnel.proxy import PodProxy
from inmesh.ztunnel.relay import Relay, RelayEnd, RelayResult
from inmesh.ztunnel.routing import HboneRoute, Passthrough, route_outbound
from inmesh.ztunnel.settings import MeshSettings, ProxySettings, ZtunnelSettings
from inmesh.ztunnel.tunnels import PodTunnels

__all__ = [
    "HboneRoute",
    "Mesh",
    "MeshLink",
    "MeshSettings",
    "Passthrough",
    "PeerLabels",
    "PodProxy",
    "PodTunnels",
    "ProxySettings",
    "Relay",
    "RelayEnd",
    "RelayResult",
    "TrafficLabels",
    "WorkloadManager",
    "WorkloadState",
    "ZtunnelMetrics",
    "ZtunnelSettings",
    "connection_labels",
    "route_outbound",
    "run",
    "serve",
]
