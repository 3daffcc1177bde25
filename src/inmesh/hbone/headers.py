"""HBONE CONNECT heads, sans-io: building the client's request and judging the server's copy.

Reference istio-inpod.md sections 6.3 and 7. A request is ``:method CONNECT`` with
``:authority ip:port`` (IPv6 in brackets) plus ``forwarded``, ``baggage`` and ``traceparent``.
A server accepts it only for one of its own pod IPs and a port that is not one of the proxy's;
every refusal is a `BadConnect` carrying the HTTP status to answer (400).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers

from inmesh.constants import PROXY_PORTS
from inmesh.errors import LocalProtocolError, RemoteProtocolError

Header = tuple[str, str]
RawHeader = tuple[bytes, bytes]

_REQUEST_FLAGS = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False)
_PORT = re.compile(r"[0-9]{1,5}")
_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


class Target(NamedTuple):
    """Where a CONNECT goes: an IP (canonical text) and a TCP port."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class BadConnect(RemoteProtocolError):
    """A CONNECT the server refuses; ``status`` is what it answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ConnectHead:
    """A validated CONNECT request head (server side)."""

    target: Target
    headers: tuple[Header, ...]
    """The regular (non-pseudo) headers as received, names lower case."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        return next((v for n, v in self.headers if n == name), None)


def canonical_ip(text: str) -> str:
    """Canonical text of an IP literal (IPv4-mapped IPv6 becomes IPv4); ValueError if none."""
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def parse_authority(text: str) -> Target:
    """Parse ``ip:port`` or ``[ipv6]:port``; `BadConnect` (400) for anything else, including
    host names (only waypoints serve those), zone ids and ports outside 1-65535."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port_text):
        raise BadConnect(f"authority {text!r} is not ip:port")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if ":" in host and not bracketed:
        raise BadConnect(f"authority {text!r}: an IPv6 address must be in brackets")
    if "%" in host:
        raise BadConnect(f"authority {text!r}: zone ids are not allowed")
    try:
        ip = canonical_ip(host)
    except ValueError as exc:
        raise BadConnect(f"authority {text!r} does not name an IP address") from exc
    if bracketed and ":" not in host:
        raise BadConnect(f"authority {text!r}: only IPv6 addresses go in brackets")
    port = int(port_text)
    if not 0 < port <= 65535:
        raise BadConnect(f"authority {text!r}: port {port} is out of range")
    return Target(ip, port)


def judge_connect(raw: Sequence[RawHeader], local_ips: Collection[str]) -> ConnectHead:
    """Validate a received request head for this pod; `BadConnect` says why it is refused.

    Malformed heads (RFC 9113 8.2/8.3: bad names, connection headers, misplaced pseudo
    headers) are refused like semantic errors, with 400 on that stream only.
    """
    try:
        checked = list(validate_headers(raw, _REQUEST_FLAGS))
    except ProtocolError as exc:
        raise BadConnect(f"malformed request head: {exc}") from exc
    headers = [(n.decode("ascii"), v.decode("latin-1")) for n, v in checked]
    pseudo = dict(h for h in headers if h[0].startswith(":"))
    method = pseudo.get(":method", "")
    if method != "CONNECT":
        raise BadConnect(f"method {method!r} is not CONNECT")
    if ":protocol" in pseudo:
        raise BadConnect(f"extended CONNECT ({pseudo[':protocol']!r}) is not served")
    target = parse_authority(pseudo.get(":authority", ""))
    if target.ip not in local_ips:
        raise BadConnect(f"authority {target} is not this pod ({', '.join(sorted(local_ips))})")
    if target.port in PROXY_PORTS:
        raise BadConnect(f"authority {target}: port {target.port} is a proxy port")
    return ConnectHead(target, tuple(h for h in headers if not h[0].startswith(":")))


def connect_request(authority: Target | str, extra: Iterable[Header] = ()) -> list[Header]:
    """The header list of a CONNECT to ``authority`` followed by ``extra`` (regular headers
    with lower-case token names; `LocalProtocolError` otherwise)."""
    head = [(":method", "CONNECT"), (":authority", str(authority))]
    for name, value in extra:
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value or "\0" in value:
            raise LocalProtocolError(f"invalid HBONE request header {name!r}: {value!r}")
        head.append((name, value))
    return head


def forwarded(client: Target, host: str | None = None) -> Header:
    """``forwarded: for="ip:port"`` naming the original client, ``;host=`` the service."""
    value = f'for="{client}"'
    return ("forwarded", f"{value};host={host}" if host else value)


def traceparent(random_bytes: Callable[[int], bytes] = os.urandom) -> Header:
    """A fresh W3C ``traceparent``: ``00-<32 hex trace>-<16 hex parent>-00``."""
    return ("traceparent", f"00-{random_bytes(16).hex()}-{random_bytes(8).hex()}-00")


@dataclass(frozen=True)
class PeerMetadata:
    """Who the source workload is, for the ``baggage`` header; empty fields are left out."""

    cluster: str = ""
    namespace: str = ""
    workload_type: str = "deployment"
    """Lower-case xDS workload type: deployment, cronjob, pod or job."""
    workload_name: str = ""
    service: str = ""
    version: str = ""
    region: str = ""
    zone: str = ""

    def baggage(self) -> Header:
        items = (
            ("k8s.cluster.name", self.cluster),
            ("k8s.namespace.name", self.namespace),
            (f"k8s.{self.workload_type}.name", self.workload_name),
            ("service.name", self.service),
            ("service.version", self.version),
            ("cloud.region", self.region),
            ("cloud.availability_zone", self.zone),
        )
        return ("baggage", ",".join(f"{k}={v}" for k, v in items if v))
