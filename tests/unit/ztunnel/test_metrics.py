"""Traffic metrics use Istio's names and labels, in a registry of their own."""

from __future__ import annotations

from prometheus_client import REGISTRY

from inmesh.ztunnel.metrics import PeerLabels, TrafficLabels, ZtunnelMetrics, connection_labels
from inmesh.ztunnel.workloads import WorkloadEntry


def test_connection_counters_and_bytes_with_istio_names_and_labels() -> None:
    m = ZtunnelMetrics()
    labels = TrafficLabels(reporter="source", source_workload="web-0",
                           source_workload_namespace="shop", destination_service="10.0.0.9")
    m.opened(labels)
    m.closed(labels, received=100, sent=7)
    want = {"reporter": "source", "source_workload": "web-0",
            "source_workload_namespace": "shop", "source_principal": "unknown",
            "destination_workload": "unknown", "destination_workload_namespace": "unknown",
            "destination_principal": "unknown", "destination_service": "10.0.0.9",
            "request_protocol": "tcp", "response_flags": "-",
            "connection_security_policy": "unknown"}
    get = m.registry.get_sample_value
    assert get("istio_tcp_connections_opened_total", want) == 1
    assert get("istio_tcp_connections_closed_total", want) == 1
    assert get("istio_tcp_received_bytes_total", want) == 100
    assert get("istio_tcp_sent_bytes_total", want) == 7
    text = m.render().decode()
    assert 'istio_tcp_sent_bytes_total{' in text
    assert 'reporter="source"' in text


def test_failures_are_counted_and_the_global_registry_is_untouched() -> None:
    m = ZtunnelMetrics()
    m.failed(TrafficLabels(reporter="destination", response_flags="CONNECT"))
    assert m.registry.get_sample_value(
        "istio_tcp_connections_failed_total",
        {"reporter": "destination", "response_flags": "CONNECT"} | {
            k: "unknown" for k in ("source_workload", "source_workload_namespace",
                                   "source_principal", "destination_workload",
                                   "destination_workload_namespace", "destination_principal",
                                   "destination_service", "connection_security_policy")}
        | {"request_protocol": "tcp"}) == 1
    assert REGISTRY.get_sample_value("istio_tcp_connections_failed_total") is None
    ZtunnelMetrics()  # a second instance (e.g. two ztunnels in one test) does not collide


def test_hbone_labels_carry_both_principals_and_mutual_tls() -> None:
    entry = WorkloadEntry(uid="u", name="db-0", namespace="data", service_account="db",
                          node="n2", ips=("10.0.0.2",))
    labels = connection_labels(
        "source", PeerLabels("web-0", "shop", "spiffe://cluster.local/ns/shop/sa/web"),
        PeerLabels.of_entry(entry, "spiffe://cluster.local/ns/data/sa/db"), "10.0.0.2",
        mutual_tls=True)
    assert labels == TrafficLabels(
        reporter="source", source_workload="web-0", source_workload_namespace="shop",
        source_principal="spiffe://cluster.local/ns/shop/sa/web", destination_workload="db-0",
        destination_workload_namespace="data",
        destination_principal="spiffe://cluster.local/ns/data/sa/db",
        destination_service="10.0.0.2", connection_security_policy="mutual_tls")


def test_plaintext_labels_leave_principals_and_policy_unknown() -> None:
    labels = connection_labels("source", PeerLabels("web-0", "shop"), PeerLabels.of_entry(None),
                               "192.0.2.1", mutual_tls=False)
    assert (labels.source_principal, labels.destination_principal,
            labels.destination_workload, labels.connection_security_policy) == (
        "unknown", "unknown", "unknown", "unknown")
    # Exactly what the proxy reported before the mesh existed.
    assert labels == TrafficLabels(reporter="source", source_workload="web-0",
                                   source_workload_namespace="shop",
                                   destination_service="192.0.2.1")
