"""CONNECT heads: authority parsing, the server's verdicts, and the headers a client sends.
Property tests at the parser boundary: every input gives a Target or a `BadConnect`, nothing else."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import LocalProtocolError
from inmesh.hbone.headers import (
    BadConnect,
    PeerMetadata,
    Target,
    connect_request,
    forwarded,
    judge_connect,
    parse_authority,
    traceparent,
)

POD_IPS = frozenset({"10.0.0.1", "fd00::1"})


def head(method: str = "CONNECT", authority: str = "10.0.0.1:8080",
         *extra: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    pairs = [(":method", method), (":authority", authority), *extra]
    return [(n.encode(), v.encode()) for n, v in pairs]


@pytest.mark.parametrize(("text", "target"), [
    ("10.0.0.1:80", Target("10.0.0.1", 80)),
    ("[fd00::1]:443", Target("fd00::1", 443)),
    ("[::ffff:10.0.0.1]:80", Target("10.0.0.1", 80)),  # IPv4-mapped: canonical IPv4
    ("[FD00:0::1]:65535", Target("fd00::1", 65535)),
    ("10.0.0.1:00080", Target("10.0.0.1", 80)),
])
def test_authorities_that_parse(text: str, target: Target) -> None:
    assert parse_authority(text) == target


@pytest.mark.parametrize("text", [
    "", "10.0.0.1", "10.0.0.1:", ":80", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1",
    "10.0.0.1:+80", "10.0.0.1: 80", "fd00::1:80", "[10.0.0.1]:80", "[fd00::1%eth0]:80",
    "db.shop.svc:80", "10.0.0.1:80:80", "10.0.0.256:80", "[fd00::1]80", "10.0.0.1:٨٠",
])
def test_authorities_that_do_not(text: str) -> None:
    with pytest.raises(BadConnect) as info:
        parse_authority(text)
    assert info.value.status == 400


@given(ip=st.ip_addresses(), port=st.integers(min_value=1, max_value=65535))
def test_formatted_targets_parse_back(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                      port: int) -> None:
    target = Target(str(ip), port)
    parsed = parse_authority(str(target))
    assert parsed.port == port
    assert ipaddress.ip_address(parsed.ip) == (
        ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip)


@given(text=st.text(max_size=60))
def test_any_text_is_a_target_or_bad_connect(text: str) -> None:
    try:
        target = parse_authority(text)
    except BadConnect:
        return
    assert 0 < target.port <= 65535
    ipaddress.ip_address(target.ip)


def test_a_good_connect_is_accepted_with_its_headers() -> None:
    got = judge_connect(head("CONNECT", "[fd00::1]:9000", ("forwarded", 'for="1.2.3.4:5"')),
                        POD_IPS)
    assert got.target == Target("fd00::1", 9000)
    assert got.header("forwarded") == 'for="1.2.3.4:5"'
    assert got.header("baggage") is None


@pytest.mark.parametrize(("raw", "why"), [
    (head("GET", "10.0.0.1:80", (":scheme", "https"), (":path", "/")), "not CONNECT"),
    (head("POST", "10.0.0.1:80", (":scheme", "https"), (":path", "/")), "not CONNECT"),
    (head(authority="10.0.0.2:80"), "is not this pod"),
    (head(authority="10.0.0.1:15001"), "proxy port"),
    (head(authority="10.0.0.1:15006"), "proxy port"),
    (head(authority="10.0.0.1:15008"), "proxy port"),
    (head(authority="10.0.0.1:0"), "out of range"),
    (head(authority="svc.cluster.local:80"), "does not name an IP"),
    (head("CONNECT", "10.0.0.1:80", (":path", "/")), "malformed"),
    (head("CONNECT", "10.0.0.1:80", ("connection", "keep-alive")), "malformed"),
    (head("CONNECT", "10.0.0.1:80", ("Upper", "x")), "malformed"),
    ([(b":authority", b"10.0.0.1:80")], "malformed"),
    (head("CONNECT", "10.0.0.1:80", (":protocol", "websocket"), (":scheme", "https"),
          (":path", "/")), "extended CONNECT"),
    ([(b"x-a", b"1"), (b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")], "malformed"),
])
def test_refused_requests_get_400_and_a_reason(raw: list[tuple[bytes, bytes]], why: str) -> None:
    with pytest.raises(BadConnect, match=why) as info:
        judge_connect(raw, POD_IPS)
    assert info.value.status == 400


_names = st.sampled_from([b":method", b":authority", b":path", b":scheme", b":status",
                          b":protocol", b"te", b"connection", b"forwarded", b"X", b""])
_values = st.sampled_from([b"CONNECT", b"GET", b"10.0.0.1:80", b"[fd00::1]:80", b"trailers",
                           b"", b" x", b"10.0.0.1:15008", b"\x00", b"\xff"])


@given(raw=st.lists(st.tuples(_names | st.binary(max_size=8), _values | st.binary(max_size=12)),
                    max_size=8))
def test_any_header_list_is_accepted_or_bad_connect(raw: list[tuple[bytes, bytes]]) -> None:
    try:
        got = judge_connect(raw, POD_IPS)
    except BadConnect as exc:
        status = exc.status
    else:
        status = 200
        assert got.target.ip in POD_IPS
        assert got.target.port not in (0, 15001, 15006, 15008)
        assert all(not n.startswith(":") for n, _ in got.headers)
    assert status in (200, 400)


def test_connect_request_puts_pseudo_headers_first() -> None:
    assert connect_request(Target("fd00::2", 80), [("baggage", "a=b")]) == [
        (":method", "CONNECT"), (":authority", "[fd00::2]:80"), ("baggage", "a=b")]


@pytest.mark.parametrize("bad", [("Forwarded", "x"), ("x-a", "1\r\nx-b: 2"), (":path", "/")])
def test_connect_request_refuses_bad_extra_headers(bad: tuple[str, str]) -> None:
    with pytest.raises(LocalProtocolError):
        connect_request(Target("10.0.0.1", 80), [bad])


def test_forwarded_names_the_client_and_optionally_the_service() -> None:
    assert forwarded(Target("10.0.0.9", 4711)) == ("forwarded", 'for="10.0.0.9:4711"')
    assert forwarded(Target("fd00::9", 1), "db.shop.svc.cluster.local") == (
        "forwarded", 'for="[fd00::9]:1";host=db.shop.svc.cluster.local')


def test_traceparent_is_w3c_version_00_with_random_ids() -> None:
    name, value = traceparent(lambda n: bytes(range(n)))
    assert name == "traceparent"
    assert value == f"00-{bytes(range(16)).hex()}-{bytes(range(8)).hex()}-00"
    assert traceparent()[1] != traceparent()[1]


def test_baggage_lists_only_known_fields_in_istio_order() -> None:
    meta = PeerMetadata(cluster="c1", namespace="shop", workload_type="deployment",
                        workload_name="web", service="web", version="v1", zone="z1")
    assert meta.baggage() == ("baggage", "k8s.cluster.name=c1,k8s.namespace.name=shop,"
                              "k8s.deployment.name=web,service.name=web,service.version=v1,"
                              "cloud.availability_zone=z1")
    assert PeerMetadata().baggage() == ("baggage", "")
