"""Pure address logic: sockaddr decoding (the kernel's SO_ORIGINAL_DST answers), canonical IPs,
refusal of self-connections, and listen-address parsing."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import ConfigError, KernelError
from inmesh.ztunnel.addressing import (
    Endpoint,
    HostPort,
    canonical_ip,
    endpoint_of,
    inbound_refusal,
    outbound_refusal,
    parse_hostport,
    parse_sockaddr_in,
    parse_sockaddr_in6,
)


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + (
        b"\0" * 8
    )


def sockaddr_in6(ip: str, port: int, scope: int = 0) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("=I", scope))


def test_sockaddr_in_decodes_address_and_network_order_port() -> None:
    assert parse_sockaddr_in(sockaddr_in("10.251.1.2", 8080)) == Endpoint("10.251.1.2", 8080)


def test_sockaddr_in6_decodes_and_canonicalises_v4_mapped() -> None:
    assert parse_sockaddr_in6(sockaddr_in6("fd00::5", 443)) == Endpoint("fd00::5", 443)
    assert parse_sockaddr_in6(sockaddr_in6("::ffff:10.0.0.7", 80)) == Endpoint("10.0.0.7", 80)


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_sockaddr_in_round_trips(ip: ipaddress.IPv4Address, port: int) -> None:
    assert parse_sockaddr_in(sockaddr_in(str(ip), port)) == Endpoint(str(ip), port)


@given(st.ip_addresses(v=6), st.integers(0, 65535), st.integers(0, 2**32 - 1))
def test_sockaddr_in6_round_trips(ip: ipaddress.IPv6Address, port: int, scope: int) -> None:
    got = parse_sockaddr_in6(sockaddr_in6(str(ip), port, scope))
    want = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
    assert got == Endpoint(want, port)


@given(st.binary(max_size=40))
def test_arbitrary_bytes_decode_or_raise_kernel_error_only(raw: bytes) -> None:
    for parse in (parse_sockaddr_in, parse_sockaddr_in6):
        try:
            ep = parse(raw)
        except KernelError:
            continue
        assert 0 <= ep.port <= 65535
        ipaddress.ip_address(ep.ip)


def test_wrong_family_is_refused() -> None:
    with pytest.raises(KernelError, match="AF_INET"):
        parse_sockaddr_in(sockaddr_in6("::1", 1))
    with pytest.raises(KernelError, match="AF_INET6"):
        parse_sockaddr_in6(sockaddr_in("1.2.3.4", 1) + b"\0" * 12)


def test_canonical_ip_and_endpoint_of_python_sockaddrs() -> None:
    assert canonical_ip("::ffff:127.0.0.1") == "127.0.0.1"
    assert canonical_ip("FD00:0::1") == "fd00::1"
    assert endpoint_of(("::ffff:10.1.2.3", 5, 0, 0)) == Endpoint("10.1.2.3", 5)
    assert endpoint_of(("fe80::1%eth0", 5, 0, 2)) == Endpoint("fe80::1", 5)
    assert str(Endpoint("fd00::1", 80)) == "[fd00::1]:80"
    assert str(Endpoint("10.0.0.1", 80)) == "10.0.0.1:80"


@pytest.mark.parametrize(
    ("dst", "refused"),
    [
        (Endpoint("10.251.2.2", 8080), False),
        (Endpoint("127.0.0.1", 8080), True),
        (Endpoint("::1", 8080), True),
        (Endpoint("10.251.2.2", 15001), True),
        (Endpoint("10.251.2.2", 15006), True),
        (Endpoint("10.251.2.2", 15008), True),
        (Endpoint("10.251.2.2", 15053), False),
    ],
)
def test_outbound_refuses_loopback_and_proxy_ports(dst: Endpoint, refused: bool) -> None:
    assert (outbound_refusal(dst) is not None) is refused


def test_inbound_refuses_only_proxy_ports() -> None:
    assert inbound_refusal(Endpoint("10.0.0.1", 80)) is None
    assert inbound_refusal(Endpoint("127.0.0.1", 80)) is None
    for port in (15001, 15006, 15008):
        reason = inbound_refusal(Endpoint("10.0.0.1", port))
        assert reason is not None
        assert str(port) in reason


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:15000") == HostPort("127.0.0.1", 15000)
    assert parse_hostport("[::]:15020") == HostPort("::", 15020)
    assert str(HostPort("::", 15020)) == "[::]:15020"
    for bad in ("15000", "localhost:1", "1.2.3.4:x", "1.2.3.4:70000", ":80", "[::1]"):
        with pytest.raises(ConfigError):
            parse_hostport(bad)
