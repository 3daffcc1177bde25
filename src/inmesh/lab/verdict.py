"""The demo's judgement of one connection: what was expected, what the evidence shows.

Pure. A `Row` holds the evidence gathered for one connection (conntrack entry, rule counter
deltas, ztunnel counter deltas, the peer the server saw); `judge` compares it with `Expect`
and returns the discrepancies, each naming the evidence that contradicts the expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

from inmesh.constants import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT
from inmesh.lab.evidence import CtFlow
from inmesh.lab.pcap import WireEvidence


@dataclass(frozen=True)
class Expect:
    ok: bool
    """The connection should succeed (False: the mesh must refuse it, fail closed)."""
    outbound_captured: bool
    """The client's traffic should be redirected to its proxy (port 15001)."""
    inbound_captured: bool
    """The server should receive it through its proxy (plaintext: redirect to 15006)."""
    hbone: bool = False
    """Mesh to mesh: the client's proxy tunnels to the server pod's port 15008 (mutual TLS),
    which the server's proxy accepts directly: ztunnel counts a `mutual_tls` inbound
    connection and the 15006 redirect is not used."""


@dataclass(frozen=True)
class Row:
    client: str
    server: str
    outcome: str
    peer_seen: str | None
    flow: CtFlow | None
    """The client pod's conntrack entry for this connection (None: the kernel has none)."""
    out_pkts: int | None
    """Packets that hit the client's REDIRECT→15001 rules meanwhile (None: it has no such rule)."""
    in_pkts: int | None
    """Packets that hit the server's REDIRECT→15006 rules meanwhile (None: no such rule)."""
    zt_out: float | None
    """ztunnel's connections opened for the client as source (None: ztunnel did not answer)."""
    zt_in: float | None
    """ztunnel's connections opened for the server as destination."""
    expect: Expect
    zt_in_mtls: float | None = None
    """Of those, the ones ztunnel labels ``connection_security_policy="mutual_tls"`` (HBONE)."""
    wire: WireEvidence | None = None
    """A capture of the link between nodes during the connection (cross-node rows only)."""

    @property
    def redirected_port(self) -> int | None:
        target = self.flow.rewritten_to if self.flow else None
        return target.port if target else None


def delta(before: float | None, after: float | None) -> float | None:
    if after is None:
        return None
    return after - (before or 0)


def _hit(n: float | None) -> bool:
    return bool(n and n > 0)


def judge(row: Row) -> list[str]:
    """Discrepancies between ``row.expect`` and the evidence; empty when all agree."""
    problems: list[str] = []
    if row.expect.ok and row.outcome != "ok":
        problems.append(f"connection should work, got {row.outcome}")
    if not row.expect.ok and row.outcome != "refused":
        problems.append(f"connection should be refused (fail closed), got {row.outcome}")
    problems += _judge_outbound(row)
    problems += _judge_inbound(row)
    problems += _judge_wire(row)
    return problems


def _judge_wire(row: Row) -> list[str]:
    """Across nodes, HBONE means TLS to 15008 and no application byte in the clear; plaintext
    means the application's bytes are there to see (which proves the capture sees them)."""
    if row.wire is None or row.outcome != "ok":
        return []
    if row.expect.hbone:
        out = []
        if not any(t.endswith(f":{INBOUND_HBONE_PORT}") for t in row.wire.tls_to):
            out.append(f"the capture shows no TLS to port {INBOUND_HBONE_PORT}")
        if row.wire.marker_seen:
            out.append("the capture shows the application's bytes in the clear")
        return out
    return [] if row.wire.marker_seen else ["the capture misses the plaintext bytes"]


def _judge_outbound(row: Row) -> list[str]:
    if row.expect.outbound_captured:
        out = []
        # A refused flow leaves no entry: conntrack destroys an unreplied flow on RST.
        if row.outcome != "refused" and row.redirected_port != OUTBOUND_PORT:
            out.append(f"conntrack shows no redirect to {OUTBOUND_PORT}")
        if not _hit(row.out_pkts):
            out.append(f"client REDIRECT→{OUTBOUND_PORT} counter did not move")
        if row.expect.ok and not _hit(row.zt_out):
            out.append("ztunnel counted no outbound connection for the client")
        return out
    out = []
    if row.redirected_port is not None:
        out.append(f"conntrack shows the flow rewritten to port {row.redirected_port}")
    if _hit(row.out_pkts):
        out.append("client REDIRECT counter moved")
    if _hit(row.zt_out):
        out.append("ztunnel counted an outbound connection for the client")
    return out


def _judge_inbound(row: Row) -> list[str]:
    if row.expect.hbone:
        out = []
        if _hit(row.in_pkts):
            out.append(f"server REDIRECT→{INBOUND_PLAINTEXT_PORT} counter moved: plaintext,"
                       " not HBONE")  # fmt: skip
        if row.expect.ok and not _hit(row.zt_in_mtls):
            out.append(f"ztunnel counted no mutual-TLS inbound ({INBOUND_HBONE_PORT}) connection")
        return out
    if _hit(row.zt_in_mtls):
        out = ["ztunnel counted a mutual-TLS inbound connection where none was expected"]
        return out + _judge_plain_inbound(row)
    return _judge_plain_inbound(row)


def _judge_plain_inbound(row: Row) -> list[str]:
    if row.expect.inbound_captured:
        out = []
        if not _hit(row.in_pkts):
            out.append(f"server REDIRECT→{INBOUND_PLAINTEXT_PORT} counter did not move")
        if row.expect.ok and not _hit(row.zt_in):
            out.append("ztunnel counted no inbound connection for the server")
        return out
    out = []
    if _hit(row.in_pkts):
        out.append("server REDIRECT counter moved")
    if _hit(row.zt_in):
        out.append("ztunnel counted an inbound connection for the server")
    return out
