"""Prometheus metrics of the ztunnel process, under Istio's names, in their own registry.

Traffic counters carry Istio's standard labels. Workload labels name pods (ZDS WorkloadInfo for
the pod served, xDS for the peer); a side the proxy cannot name is ``unknown``, and
``destination_service`` carries the original destination IP. Principals are SPIFFE URIs and are
only set for HBONE, whose ``connection_security_policy`` is ``mutual_tls`` (plaintext:
``unknown``). Byte counters follow Istio's meaning: ``received`` = client → server (request)
bytes, ``sent`` = server → client (response) bytes. They are counted when a connection closes.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from inmesh.ztunnel.workloads import WorkloadEntry

UNKNOWN = "unknown"
MUTUAL_TLS = "mutual_tls"

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
    """``unknown`` for plaintext; ``mutual_tls`` for HBONE."""


@dataclass(frozen=True)
class PeerLabels:
    """One side of a connection, as far as the proxy knows it."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN
    """SPIFFE URI; only known (verified or presented) on HBONE."""

    @classmethod
    def of_entry(cls, entry: WorkloadEntry | None, principal: str = UNKNOWN) -> PeerLabels:
        """The labels of an xDS workload (pod name and namespace), or all unknown."""
        if entry is None:
            return cls(principal=principal)
        return cls(entry.name or UNKNOWN, entry.namespace or UNKNOWN, principal)


def connection_labels(reporter: str, source: PeerLabels, destination: PeerLabels,
                      service: str, *, mutual_tls: bool) -> TrafficLabels:
    """The labels of one connection; ``reporter`` is ``source`` (outbound) or ``destination``."""
    return TrafficLabels(
        reporter=reporter,
        source_workload=source.workload,
        source_workload_namespace=source.namespace,
        source_principal=source.principal,
        destination_workload=destination.workload,
        destination_workload_namespace=destination.namespace,
        destination_principal=destination.principal,
        destination_service=service,
        connection_security_policy=MUTUAL_TLS if mutual_tls else UNKNOWN,
    )


class TrafficCounter(Protocol):
    """Where connection events go: `ZtunnelMetrics`, or an inbound worker's link to it."""

    def opened(self, labels: TrafficLabels) -> None: ...
    def closed(self, labels: TrafficLabels, received: int, sent: int) -> None: ...
    def failed(self, labels: TrafficLabels) -> None: ...


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
