"""Prometheus metrics of the ztunnel process, under Istio's names, in their own registry.

Traffic counters carry Istio's standard labels. Without xDS (this phase) the proxy only knows
the pod it serves (from ZDS WorkloadInfo) and the peer's address, so the other side's workload
labels are ``unknown`` and ``destination_service`` carries the original destination IP. Byte
counters follow Istio's meaning: ``received`` = client → server (request) bytes, ``sent`` =
server → client (response) bytes. They are counted when a connection closes.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

UNKNOWN = "unknown"

_TRAFFIC_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)


@dataclass(frozen=True)
class TrafficLabels:
    """Label values of one proxied connection (field order = `_TRAFFIC_LABELS`)."""

    reporter: str
    """``source`` for outbound (the proxy sits at the client), ``destination`` for inbound."""
    source_workload: str = UNKNOWN
    source_workload_namespace: str = UNKNOWN
    source_principal: str = UNKNOWN
    destination_workload: str = UNKNOWN
    destination_workload_namespace: str = UNKNOWN
    destination_principal: str = UNKNOWN
    destination_service: str = UNKNOWN
    request_protocol: str = "tcp"
    response_flags: str = "-"
    connection_security_policy: str = UNKNOWN
    """``unknown`` for plaintext; ``mutual_tls`` once HBONE exists."""


class ZtunnelMetrics:
    """All counters and gauges of one ztunnel process (not the global default registry)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._opened = Counter("istio_tcp_connections_opened", "TCP connections opened.",
                               _TRAFFIC_LABELS, registry=r)
        self._closed = Counter("istio_tcp_connections_closed", "TCP connections closed.",
                               _TRAFFIC_LABELS, registry=r)
        self._failed = Counter("istio_tcp_connections_failed", "TCP connections that failed.",
                               _TRAFFIC_LABELS, registry=r)
        self._received = Counter("istio_tcp_received_bytes", "Bytes received from the client.",
                                 _TRAFFIC_LABELS, registry=r)
        self._sent = Counter("istio_tcp_sent_bytes", "Bytes sent back to the client.",
                             _TRAFFIC_LABELS, registry=r)
        self.active_proxies = Gauge("workload_manager_active_proxy_count",
                                    "Pod proxies running.", registry=r)
        self.pending_proxies = Gauge("workload_manager_pending_proxy_count",
                                     "Pod proxies waiting for a start retry.", registry=r)
        self.proxies_started = Counter("workload_manager_proxies_started",
                                       "Pod proxies started.", registry=r)
        self.proxies_stopped = Counter("workload_manager_proxies_stopped",
                                       "Pod proxies stopped.", registry=r)

    def opened(self, labels: TrafficLabels) -> None:
        self._opened.labels(*astuple(labels)).inc()

    def closed(self, labels: TrafficLabels, received: int, sent: int) -> None:
        values = astuple(labels)
        self._closed.labels(*values).inc()
        self._received.labels(*values).inc(received)
        self._sent.labels(*values).inc(sent)

    def failed(self, labels: TrafficLabels) -> None:
        self._failed.labels(*astuple(labels)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
