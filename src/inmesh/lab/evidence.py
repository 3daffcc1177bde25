"""Reading the kernel's and the proxy's own records: conntrack, rule counters, ztunnel metrics.

Pure parsers for what `conntrack -L`, `nft -j list table`, `iptables-save -c` and a Prometheus
/metrics page print. The demo shows these, never its own bookkeeping. Malformed lines are
skipped (these are reports, not inputs we act on); `RemoteProtocolError` only for JSON that is
not nft's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from inmesh.errors import RemoteProtocolError


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class CtFlow:
    """One conntrack entry: the original direction and the reply direction it expects."""

    proto: str
    orig_src: Endpoint
    orig_dst: Endpoint
    reply_src: Endpoint
    reply_dst: Endpoint
    state: str | None = None

    @property
    def rewritten_to(self) -> Endpoint | None:
        """Where the kernel really sent the flow, if NAT changed its destination."""
        return None if self.reply_src == self.orig_dst else self.reply_src


_KV = re.compile(r"(\w+)=(\S+)")
_CT_STATES = frozenset(
    {"SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
     "CLOSE", "SYN_SENT2"}
)  # fmt: skip


def parse_conntrack_line(line: str) -> CtFlow | None:
    """One `conntrack -L` line: the first src/dst/sport/dport are the original direction, the
    second the reply direction."""
    words = line.split()
    if not words or words[0] not in ("tcp", "udp"):
        return None
    fields: dict[str, list[str]] = {"src": [], "dst": [], "sport": [], "dport": []}
    for key, value in _KV.findall(line):
        if key in fields:
            fields[key].append(value)
    if any(len(v) < 2 for v in fields.values()):
        return None
    try:
        sport = [int(p) for p in fields["sport"][:2]]
        dport = [int(p) for p in fields["dport"][:2]]
    except ValueError:
        return None
    src, dst = fields["src"], fields["dst"]
    state = next((w for w in words if w in _CT_STATES), None)
    return CtFlow(
        words[0],
        Endpoint(src[0], sport[0]),
        Endpoint(dst[0], dport[0]),
        Endpoint(src[1], sport[1]),
        Endpoint(dst[1], dport[1]),
        state,
    )


def parse_conntrack(text: str) -> list[CtFlow]:
    """Entries of `conntrack -L` output (default format); other lines are ignored."""
    return [f for f in map(parse_conntrack_line, text.splitlines()) if f is not None]


def flow_from(flows: Iterable[CtFlow], src: Endpoint) -> CtFlow | None:
    """The entry whose original direction starts at ``src`` (a client's local address)."""
    return next((f for f in flows if f.orig_src == src), None)


@dataclass(frozen=True)
class RedirectCounter:
    """A REDIRECT rule and how many packets matched it."""

    chain: str
    to_port: int
    packets: int


def nft_redirect_counters(text: str) -> list[RedirectCounter]:
    """Rules with both `counter` and `redirect to :PORT` in `nft -j list table ...` output."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RemoteProtocolError(f"nft printed invalid JSON: {exc}") from exc
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RemoteProtocolError("nft JSON has no 'nftables' list")
    out = []
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict):
            found = _nft_rule_counter(rule)
            if found is not None:
                out.append(found)
    return out


def _nft_rule_counter(rule: Mapping[str, Any]) -> RedirectCounter | None:
    packets = port = None
    for expr in rule.get("expr") or ():
        if not isinstance(expr, dict):
            continue
        if isinstance(expr.get("counter"), dict):
            packets = expr["counter"].get("packets")
        if isinstance(expr.get("redirect"), dict):
            port = expr["redirect"].get("port")
    if isinstance(packets, int) and isinstance(port, int):
        return RedirectCounter(str(rule.get("chain", "?")), port, packets)
    return None


_IPT_REDIRECT = re.compile(
    r"^\[(\d+):\d+\]\s+-A\s+(\S+)\s.*-j REDIRECT\s+--to-ports\s+(\d+)", re.MULTILINE
)


def ipt_redirect_counters(text: str) -> list[RedirectCounter]:
    """REDIRECT rules of `iptables-save -c` output, with their packet counters."""
    return [
        RedirectCounter(chain, int(port), int(pkts))
        for pkts, chain, port in _IPT_REDIRECT.findall(text)
    ]


def packets_to(counters: Iterable[RedirectCounter], port: int) -> int:
    return sum(c.packets for c in counters if c.to_port == port)


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


def metric_samples(text: str, name: str) -> list[Sample]:
    """Samples called ``name`` (e.g. istio_tcp_connections_opened_total) in Prometheus text."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out.append(Sample(dict(s.labels), float(s.value)))
    return out


def workload_total(
    samples: Iterable[Sample],
    reporter: str,
    workload: str,
    namespace: str,
    security_policy: str | None = None,
) -> float:
    """Sum for one workload as seen by one reporter: `source` = its outbound, `destination` =
    its inbound (Istio's label meaning); only connections with ``security_policy`` (e.g.
    ``mutual_tls``, Istio's `connection_security_policy` label) if given."""
    side = "source" if reporter == "source" else "destination"
    return sum(
        s.value
        for s in samples
        if s.labels.get("reporter") == reporter
        and s.labels.get(f"{side}_workload") == workload
        and s.labels.get(f"{side}_workload_namespace") == namespace
        and (security_policy is None
             or s.labels.get("connection_security_policy") == security_policy)
    )  # fmt: skip


def parse_ss_listeners(text: str) -> set[int]:
    """TCP ports with a listening socket, from `ss -Hltn` output."""
    ports: set[int] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "LISTEN":
            _, _, port = fields[3].rpartition(":")
            if port.isdigit():
                ports.add(int(port))
    return ports
