"""Rich tables for the lab's reports: what a platform engineer reads at the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from inmesh.lab.meshview import CertificateStatus
from inmesh.lab.status import ControlPlaneStatus, LabStatus, PodStatus, ProcessStatus

_STATE_STYLE = {
    "ready": "green",
    "not ready": "yellow",
    "down": "red",
    "enrolled": "green",
    "pending": "yellow",
    "failed": "red",
    "no": "dim",
    "unknown": "magenta",
    "Up": "green",
    "Pending": "yellow",
    "-": "dim",
    "available": "green",
    "Available": "green",
    "renewing": "green",
    "initializing": "yellow",
    "unavailable": "red",
    "synced": "green",
    "connected": "yellow",
    "disconnected": "red",
    "HBONE": "green",
}


def styled(value: str) -> Text:
    return Text(value, style=_STATE_STYLE.get(value, ""))


def _proc(p: ProcessStatus) -> Text:
    text = styled(p.state)
    if p.pid is not None:
        text.append(f" (pid {p.pid})", style="dim")
    return text


def _enrollment(p: PodStatus) -> Text:
    text = styled(p.enrollment)
    if p.enrollment_error:
        text.append(f": {p.enrollment_error}", style="red")
    return text


def _certificate(c: CertificateStatus) -> Text:
    text = styled(c.state)
    if c.not_after:
        text.append(f" until {c.not_after}", style="dim")
    return text


def _controlplane(cp: ControlPlaneStatus | None, console: Console) -> None:
    if cp is None:
        console.print("control plane: none (a lab from before it had one: run `up` again)")
        return
    line = Text("control plane: ")
    line.append_text(_proc(cp.process))
    line.append(f" on {cp.listen} (netns {cp.netns}, trust domain {cp.trust_domain})")
    console.print(line)
    for err in cp.errors:
        console.print(f"[yellow]control plane: {err}[/]", highlight=False)


def render_status(status: LabStatus, console: Console) -> None:
    if not status.exists:
        console.print(f"no lab at {status.root}")
        return
    _controlplane(status.controlplane, console)
    nodes = Table(title=f"Nodes (lab {status.root}, backend {status.backend})")
    for col in ("node", "netns", "pod CIDR", "agent", "ztunnel", "rule backend", "ZDS conns",
                "xDS"):  # fmt: skip
        nodes.add_column(col)
    for n in status.nodes:
        nodes.add_row(
            n.name,
            Text(n.netns, style="" if n.netns_exists else "red strike"),
            n.pod_cidr,
            _proc(n.agent),
            _proc(n.ztunnel),
            n.backend or "?",
            "?" if n.ztunnel_connections is None else str(n.ztunnel_connections),
            styled(n.xds),
        )
    console.print(nodes)
    for n in status.nodes:
        for err in n.errors:
            console.print(f"[yellow]{n.name}: {err}[/]")
    pods = Table(title="Pods (enrollment from the agent, proxy and certificate from ztunnel)")
    for col in ("pod", "node", "IPs", "phase", "mesh wanted", "enrolled", "proxy", "tunnel",
                "certificate"):  # fmt: skip
        pods.add_column(col)
    for p in status.pods:
        pods.add_row(
            f"{p.namespace}/{p.name}",
            p.node,
            ", ".join(p.ips) or "-",
            p.phase,
            Text("yes" if p.wants_mesh else "no", style="bold" if p.wants_mesh else "dim"),
            _enrollment(p),
            styled(p.proxy),
            styled(p.tunnel),
            _certificate(p.certificate),
        )
    console.print(pods)
    labelled = {ns: labels for ns, labels in status.namespaces.items() if labels}
    for ns, labels in labelled.items():
        console.print(f"namespace {ns}: " + ", ".join(f"{k}={v}" for k, v in labels.items()))
