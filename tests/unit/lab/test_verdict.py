"""The demo's judgement: evidence that contradicts an expectation is named."""

from __future__ import annotations

from dataclasses import replace

from inmesh.lab.evidence import CtFlow, Endpoint
from inmesh.lab.pcap import WireEvidence
from inmesh.lab.verdict import Expect, Row, delta, judge

CLIENT = Endpoint("10.244.1.2", 40000)
SERVER = Endpoint("10.244.1.4", 8080)
REDIRECTED = CtFlow("tcp", CLIENT, SERVER, Endpoint("127.0.0.1", 15001), CLIENT)
DIRECT = CtFlow("tcp", CLIENT, SERVER, SERVER, CLIENT)

MESH_TO_MESH = Row("c", "s", "ok", "10.244.1.2:40000", REDIRECTED, 1, 1, 1.0, 1.0,
                   Expect(ok=True, outbound_captured=True, inbound_captured=True))  # fmt: skip
PLAIN_TO_PLAIN = Row("c", "s", "ok", "10.244.1.2:40000", None, None, None, 0.0, 0.0,
                     Expect(ok=True, outbound_captured=False, inbound_captured=False))  # fmt: skip


def test_consistent_rows_have_no_problems() -> None:
    assert judge(MESH_TO_MESH) == []
    assert judge(PLAIN_TO_PLAIN) == []
    assert judge(replace(PLAIN_TO_PLAIN, flow=DIRECT)) == []


def test_missing_redirect_evidence_is_named() -> None:
    row = replace(MESH_TO_MESH, flow=DIRECT, out_pkts=0, zt_out=0.0)
    problems = judge(row)
    assert any("conntrack" in p for p in problems)
    assert any("REDIRECT→15001" in p for p in problems)
    assert any("ztunnel counted no outbound" in p for p in problems)


def test_unexpected_capture_is_named() -> None:
    row = replace(PLAIN_TO_PLAIN, flow=REDIRECTED, out_pkts=1, zt_in=1.0)
    problems = judge(row)
    assert "conntrack shows the flow rewritten to port 15001" in problems
    assert "client REDIRECT counter moved" in problems
    assert "ztunnel counted an inbound connection for the server" in problems


def test_fail_closed_rows() -> None:
    expect = Expect(ok=False, outbound_captured=True, inbound_captured=False)
    refused = Row("c", "s", "refused", None, None, 1, None, None, None, expect)
    assert judge(refused) == []  # a reset flow leaves no conntrack entry, counters suffice
    leaked = replace(refused, outcome="ok")
    assert "connection should be refused (fail closed), got ok" in judge(leaked)
    no_rule = replace(refused, out_pkts=0)
    assert "client REDIRECT→15001 counter did not move" in judge(no_rule)


def test_failed_connection_when_it_should_work() -> None:
    assert "connection should work, got timeout" in judge(replace(MESH_TO_MESH, outcome="timeout"))


def test_delta() -> None:
    assert delta(1.0, 3.0) == 2.0
    assert delta(None, 3.0) == 3.0
    assert delta(1.0, None) is None


HBONE = Expect(ok=True, outbound_captured=True, inbound_captured=True, hbone=True)


def test_mesh_to_mesh_over_hbone_needs_mutual_tls_and_no_15006_redirect() -> None:
    row = replace(MESH_TO_MESH, expect=HBONE, in_pkts=0, zt_in_mtls=1.0)
    assert judge(row) == []
    plaintext = replace(row, in_pkts=1, zt_in_mtls=0.0)
    assert judge(plaintext) == [
        "server REDIRECT→15006 counter moved: plaintext, not HBONE",
        "ztunnel counted no mutual-TLS inbound (15008) connection",
    ]
    unexpected = replace(MESH_TO_MESH, zt_in_mtls=1.0)
    assert "mutual-TLS inbound connection where none was expected" in judge(unexpected)[0]


def test_the_fabric_capture_is_judged_for_hbone_and_plaintext() -> None:
    tls = WireEvidence(12, ("10.244.2.2:15008",), marker_seen=False)
    row = replace(MESH_TO_MESH, expect=HBONE, in_pkts=0, zt_in_mtls=1.0, wire=tls)
    assert judge(row) == []
    leaked = replace(row, wire=WireEvidence(12, (), marker_seen=True))
    assert judge(leaked) == [
        "the capture shows no TLS to port 15008",
        "the capture shows the application's bytes in the clear",
    ]
    plain = replace(PLAIN_TO_PLAIN, wire=WireEvidence(5, (), marker_seen=True))
    assert judge(plain) == []
    blind = replace(plain, wire=WireEvidence(0, (), marker_seen=False))
    assert judge(blind) == ["the capture misses the plaintext bytes"]
