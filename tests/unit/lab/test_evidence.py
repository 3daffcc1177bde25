"""Evidence parsers: conntrack, rule counters, ss listeners and Prometheus samples."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import RemoteProtocolError
from inmesh.lab.evidence import (
    Endpoint,
    flow_from,
    ipt_redirect_counters,
    metric_samples,
    nft_redirect_counters,
    packets_to,
    parse_conntrack,
    parse_conntrack_line,
    parse_ss_listeners,
    workload_total,
)

CONNTRACK = """\
tcp      6 118 TIME_WAIT src=10.244.1.2 dst=10.244.1.4 sport=39013 dport=8080 src=127.0.0.1 \
dst=10.244.1.2 sport=15001 dport=39013 [ASSURED] mark=273 use=1
tcp      6 117 TIME_WAIT src=10.244.1.2 dst=10.244.1.4 sport=44670 dport=8080 src=10.244.1.4 \
dst=10.244.1.2 sport=8080 dport=44670 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.2 dst=10.244.1.1 sport=5353 dport=53 [UNREPLIED] src=10.244.1.1 \
dst=10.244.1.2 sport=53 dport=5353 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.
"""


def test_conntrack_redirected_flow_replies_from_the_proxy_port() -> None:
    flows = parse_conntrack(CONNTRACK)
    assert len(flows) == 3
    redirected = flow_from(flows, Endpoint("10.244.1.2", 39013))
    assert redirected is not None
    assert redirected.state == "TIME_WAIT"
    assert redirected.orig_dst == Endpoint("10.244.1.4", 8080)
    assert redirected.rewritten_to == Endpoint("127.0.0.1", 15001)
    direct = flow_from(flows, Endpoint("10.244.1.2", 44670))
    assert direct is not None
    assert direct.rewritten_to is None
    assert flow_from(flows, Endpoint("10.244.1.9", 1)) is None


@pytest.mark.parametrize(
    "line", ["", "conntrack v1.4.7", "tcp 6 src=1.2.3.4 dst=1.2.3.5 sport=1 dport=2",
             "tcp 6 src=a dst=b sport=x dport=2 src=c dst=d sport=3 dport=4"],
)  # fmt: skip
def test_incomplete_conntrack_lines_are_skipped(line: str) -> None:
    assert parse_conntrack_line(line) is None


@given(st.text(max_size=300))
def test_conntrack_parser_never_raises(text: str) -> None:
    assert isinstance(parse_conntrack(text), list)


def _nft(*rules: list[dict[str, object]]) -> str:
    items: list[dict[str, object]] = [{"metainfo": {"json_schema_version": 1}}]
    items += [{"rule": {"family": "inet", "table": "istio-ambient-nat", "chain": "istio-output",
                        "handle": i, "expr": expr}} for i, expr in enumerate(rules)]  # fmt: skip
    return json.dumps({"nftables": items})


def test_nft_counters_of_redirect_rules() -> None:
    text = _nft(
        [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
         {"counter": {"packets": 3, "bytes": 180}}, {"redirect": {"port": 15001}}],
        [{"counter": {"packets": 9, "bytes": 1}}, {"accept": None}],
        [{"counter": {"packets": 2, "bytes": 120}}, {"redirect": {"port": 15006}}],
    )  # fmt: skip
    counters = nft_redirect_counters(text)
    assert packets_to(counters, 15001) == 3
    assert packets_to(counters, 15006) == 2
    assert len(counters) == 2


@pytest.mark.parametrize("text", ["not json", "[]", '{"nftables": 1}'])
def test_nft_non_json_is_a_remote_protocol_error(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        nft_redirect_counters(text)


IPTABLES_SAVE = """\
*nat
:PREROUTING ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
[7:420] -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
[0:0] -A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
[5:300] -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"""


def test_iptables_save_counters_of_redirect_rules() -> None:
    counters = ipt_redirect_counters(IPTABLES_SAVE)
    assert [(c.chain, c.to_port, c.packets) for c in counters] == [
        ("ISTIO_OUTPUT", 15001, 7),
        ("ISTIO_PRERT", 15006, 0),
    ]
    assert ipt_redirect_counters("*nat\nCOMMIT\n") == []


def test_ss_listeners() -> None:
    text = "LISTEN 0 128 *:15008 *:*\nLISTEN 0 128 0.0.0.0:8080 0.0.0.0:*\n" \
           "LISTEN 0 128 [::]:15001 [::]:*\nESTAB 0 0 1.2.3.4:5 6.7.8.9:10\n"  # fmt: skip
    assert parse_ss_listeners(text) == {15008, 8080, 15001}


METRICS = """\
# HELP istio_tcp_connections_opened Connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",source_workload="client-mesh",\
source_workload_namespace="default",destination_service="10.244.1.4"} 2.0
istio_tcp_connections_opened_total{reporter="source",source_workload="client-mesh",\
source_workload_namespace="default",destination_service="10.244.1.5"} 1.0
istio_tcp_connections_opened_total{reporter="destination",destination_workload="server-mesh",\
destination_workload_namespace="shop"} 3.0
istio_tcp_connections_opened_created{reporter="source",source_workload="client-mesh",\
source_workload_namespace="default",destination_service="10.244.1.4"} 1.7e9
"""


def test_workload_totals_per_reporter() -> None:
    samples = metric_samples(METRICS, "istio_tcp_connections_opened_total")
    assert len(samples) == 3
    assert workload_total(samples, "source", "client-mesh", "default") == 3.0
    assert workload_total(samples, "destination", "server-mesh", "shop") == 3.0
    assert workload_total(samples, "destination", "client-mesh", "default") == 0.0
    assert workload_total(samples, "source", "client-mesh", "other") == 0.0


def test_workload_totals_by_connection_security_policy() -> None:
    text = """\
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="destination",destination_workload="server-mesh",\
destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 2.0
istio_tcp_connections_opened_total{reporter="destination",destination_workload="server-mesh",\
destination_workload_namespace="shop",connection_security_policy="unknown"} 1.0
"""
    samples = metric_samples(text, "istio_tcp_connections_opened_total")
    assert workload_total(samples, "destination", "server-mesh", "shop") == 3.0
    assert workload_total(samples, "destination", "server-mesh", "shop", "mutual_tls") == 2.0
    assert workload_total(samples, "destination", "server-mesh", "shop", "unknown") == 1.0
