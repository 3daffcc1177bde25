"""Traffic metrics use Istio's names and labels, in a registry of their own."""

from __future__ import annotations

from prometheus_client import REGISTRY

from inmesh.ztunnel.metrics import TrafficLabels, ZtunnelMetrics


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
