"""ztunnel: the per-node proxy that listens inside each enrolled pod's network namespace.

Layout: `addressing` (pure address logic), `sockets` (in-pod socket factory), `relay` (the byte
hot path), `proxy` (one pod's listeners and connections), `manager` (which pods have a proxy;
the ZDS handler), `metrics`, `admin` (HTTP endpoints), `settings`, and `app` (the process).
"""

from inmesh.ztunnel.app import run, serve
from inmesh.ztunnel.manager import WorkloadManager, WorkloadState
from inmesh.ztunnel.metrics import TrafficLabels, ZtunnelMetrics
from inmesh.ztunnel.proxy import PodProxy
from inmesh.ztunnel.relay import Relay, RelayEnd, RelayResult
from inmesh.ztunnel.settings import ProxySettings, ZtunnelSettings

__all__ = [
    "PodProxy",
    "ProxySettings",
    "Relay",
    "RelayEnd",
    "RelayResult",
    "TrafficLabels",
    "WorkloadManager",
    "WorkloadState",
    "ZtunnelMetrics",
    "ZtunnelSettings",
    "run",
    "serve",
]
