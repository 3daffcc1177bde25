"""Pure address logic of the proxy: sockaddr decoding, canonical IPs, and which targets are refused.

Sans-io: bytes and strings in, values out. The kernel hands back original destinations as raw
``sockaddr_in`` / ``sockaddr_in6`` structs; everything downstream sees a canonical `Endpoint`
(IPv4-mapped IPv6 addresses turned back into IPv4, as Istio's ztunnel does).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from inmesh.constants import PROXY_PORTS
from inmesh.errors import ConfigError, KernelError

AF_INET = 2
AF_INET6 = 10
SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28


class Endpoint(NamedTuple):
    """An IP (canonical text form) and a TCP port; usable directly as a socket address."""

    ip: str
    port: int

    @property
    def is_v6(self) -> bool:
        return ":" in self.ip

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.is_v6 else f"{self.ip}:{self.port}"


class HostPort(NamedTuple):
    """A listen address given by the operator (host may be a wildcard)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def canonical_ip(ip: str) -> str:
    """Text form of ``ip`` with IPv4-mapped IPv6 (``::ffff:a.b.c.d``) turned into IPv4."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def endpoint_of(sockname: tuple[object, ...]) -> Endpoint:
    """Canonical `Endpoint` of a Python socket address tuple (AF_INET or AF_INET6)."""
    return Endpoint(canonical_ip(str(sockname[0])), int(str(sockname[1])))


def parse_sockaddr_in(raw: bytes) -> Endpoint:
    """Decode a ``struct sockaddr_in`` (as returned by SO_ORIGINAL_DST)."""
    if len(raw) < 8:
        raise KernelError(f"sockaddr_in too short: {len(raw)} bytes")
    family = struct.unpack_from("=H", raw, 0)[0]
    if family != AF_INET:
        raise KernelError(f"sockaddr_in has family {family}, expected AF_INET")
    port = struct.unpack_from("!H", raw, 2)[0]
    return Endpoint(str(ipaddress.IPv4Address(raw[4:8])), port)


def parse_sockaddr_in6(raw: bytes) -> Endpoint:
    """Decode a ``struct sockaddr_in6`` (as returned by IP6T_SO_ORIGINAL_DST), canonicalised."""
    if len(raw) < 24:
        raise KernelError(f"sockaddr_in6 too short: {len(raw)} bytes")
    family = struct.unpack_from("=H", raw, 0)[0]
    if family != AF_INET6:
        raise KernelError(f"sockaddr_in6 has family {family}, expected AF_INET6")
    port = struct.unpack_from("!H", raw, 2)[0]
    return Endpoint(canonical_ip(str(ipaddress.IPv6Address(raw[8:24]))), port)


def outbound_refusal(dst: Endpoint) -> str | None:
    """Why an outbound connection to ``dst`` must not be proxied, or None if it may.

    Loopback targets and the proxy's own ports would make the proxy connect to itself (a pod
    reaching the listener directly has no original destination, so its local address is used).
    """
    if ipaddress.ip_address(dst.ip).is_loopback:
        return f"loopback destination {dst}"
    if dst.port in PROXY_PORTS:
        return f"destination port {dst.port} is a proxy port"
    return None


def inbound_refusal(dst: Endpoint) -> str | None:
    """Why an inbound plaintext connection to ``dst`` must not be delivered, or None."""
    if dst.port in PROXY_PORTS:
        return f"destination port {dst.port} is a proxy port"
    return None


def parse_hostport(text: str) -> HostPort:
    """Parse ``host:port`` or ``[v6]:port`` (an IP literal, not a name); `ConfigError` if bad."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {text!r} must look like HOST:PORT or [V6]:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError as exc:
        raise ConfigError(f"address {text!r}: {exc}") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"address {text!r}: port {port} out of range")
    return HostPort(host, port)
