"""The demo's evidence tables: one row per connection, one column per independent witness."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from inmesh.constants import OUTBOUND_PORT
from inmesh.lab.pcap import WireEvidence
from inmesh.lab.verdict import Row, judge

LEGEND = (
    "conntrack: `conntrack -L` in the client pod's netns; 'reply from' is where the kernel "
    f"really sent the flow (127.0.0.1:{OUTBOUND_PORT} = REDIRECTed to the pod's proxy); pods "
    "without rules have no conntrack, and a refused flow is destroyed at once.\n"
    "REDIRECT pkts: packet counters of the REDIRECT rules in the client (→15001) and server "
    "(→15006) pods, before vs after; 'no rules' = the pod has none.\n"
    "ztunnel: istio_tcp_connections_opened_total from ztunnel /metrics, client as source / "
    "server as destination; 'mTLS' = labelled connection_security_policy=mutual_tls, i.e. it "
    "arrived over HBONE on port 15008 (which is why the server's →15006 counter stays put).\n"
    "server saw: the peer address the echo server got from accept().\n"
    "fabric capture: tcpdump on the bridge between the nodes during the connection; 'marker' = "
    "the unique line the client sent (and the server echoed), searched in the raw pcap bytes."
)


def _outcome(row: Row) -> Text:
    return Text(row.outcome, style="green" if row.outcome == "ok" else "red")


def _conntrack(row: Row) -> Text:
    if row.flow is None:
        return Text("no entry", style="dim")
    target = row.flow.rewritten_to
    if target is None:
        return Text(f"{row.flow.reply_src} (direct)")
    style = "bold yellow" if target.port == OUTBOUND_PORT else "yellow"
    return Text(f"{target} (REDIRECT)", style=style)


def _pkts(n: int | None) -> Text:
    if n is None:
        return Text("no rules", style="dim")
    return Text(f"+{n}", style="bold" if n else "dim")


def _zt(n: float | None) -> str:
    return "n/a" if n is None else f"+{n:g}"


def _mtls(n: float | None) -> str:
    return " mTLS" if n else ""


def _wire(wire: WireEvidence | None) -> Text:
    if wire is None:
        return Text("-", style="dim")
    text = Text()
    if wire.tls_to:
        text.append(f"TLS → {', '.join(wire.tls_to)}; ", style="green")
    if wire.marker_seen:
        text.append("marker in clear", style="yellow")
    else:
        text.append("marker absent", style="bold green")
    return text


def _verdict(row: Row) -> Text:
    """✓ or ✗; the discrepancies themselves are listed in the demo's summary."""
    return Text("✓", style="green") if not judge(row) else Text("✗", style="bold red")


def render_rows(title: str, rows: list[Row], console: Console) -> None:
    table = Table(title=title, title_justify="left")
    wired = any(row.wire is not None for row in rows)
    cols = ["connection", "result", "conntrack: reply from", "REDIRECT pkts out / in",
            "ztunnel out / in", "server saw", *(["fabric capture"] if wired else []), "ok"]
    for col in cols:
        table.add_column(col, no_wrap=col == "connection")
    for row in rows:
        cells: list[str | Text] = [
            f"{row.client} → {row.server}",
            _outcome(row),
            _conntrack(row),
            Text.assemble(_pkts(row.out_pkts), " / ", _pkts(row.in_pkts)),
            f"{_zt(row.zt_out)} / {_zt(row.zt_in)}{_mtls(row.zt_in_mtls)}",
            row.peer_seen or "-",
        ]
        if wired:
            cells.append(_wire(row.wire))
        table.add_row(*cells, _verdict(row))
    console.print(table)


def render_legend(console: Console) -> None:
    console.print(LEGEND, style="dim", highlight=False)
