"""Reading the lab's live state: are its processes ours and running, what do they answer.

Every answer is asked for, never remembered: the agent's /readyz and /status over its unix
socket, ztunnel's readiness and /config_dump over TCP inside the node netns, the control
plane's mutual-TLS handshake on its unix socket.
"""

from __future__ import annotations

from typing import Any

from inmesh.errors import InmeshError
from inmesh.lab import namespaces, procs
from inmesh.lab.controlplane import ROLE as CONTROLPLANE
from inmesh.lab.controlplane import controlplane_ready, probe_credentials
from inmesh.lab.layout import LabLayout
from inmesh.lab.nodes import (
    ZTUNNEL_ADMIN_ADDR,
    ZTUNNEL_METRICS_ADDR,
    agent_ready,
    ztunnel_ready,
)
from inmesh.lab.probes import get_in_netns, get_unix
from inmesh.lab.settings import LabSettings
from inmesh.lab.state import LabState, NodeRecord
from inmesh.lab.status import ControlPlaneLive, NodeLive


def agent_status(lab: LabLayout, node: str, settings: LabSettings) -> dict[str, Any]:
    reply = get_unix(str(lab.node(node).plugin_socket), "/status", settings.http_timeout_s)
    if not reply.ok:
        raise InmeshError(f"{node}: agent /status answered {reply.status}: {reply.text()[:200]}")
    doc = reply.json()
    if not isinstance(doc, dict):
        raise InmeshError(f"{node}: agent /status is not a JSON object")
    return doc


def ztunnel_config_dump(lab: LabLayout, node: str, settings: LabSettings) -> dict[str, Any]:
    reply = get_in_netns(
        lab.node(node).netns_path, ZTUNNEL_ADMIN_ADDR, "/config_dump", settings.http_timeout_s
    )
    if not reply.ok:
        raise InmeshError(f"{node}: ztunnel /config_dump answered {reply.status}")
    doc = reply.json()
    if not isinstance(doc, dict):
        raise InmeshError(f"{node}: ztunnel /config_dump is not a JSON object")
    return doc


def ztunnel_metrics(lab: LabLayout, node: str, settings: LabSettings) -> str:
    reply = get_in_netns(
        lab.node(node).netns_path, ZTUNNEL_METRICS_ADDR, "/metrics", settings.http_timeout_s
    )
    if not reply.ok:
        raise InmeshError(f"{node}: ztunnel /metrics answered {reply.status}")
    return reply.text()


def observe_node(lab: LabLayout, rec: NodeRecord, settings: LabSettings) -> NodeLive:
    layout = lab.node(rec.name)
    netns_ok = namespaces.exists(layout.netns)
    agent_pid = procs.running_pid(rec.processes.get("agent"))
    zt_pid = procs.running_pid(rec.processes.get("ztunnel"))
    errors: list[str] = []
    status = dump = None
    if agent_pid is not None:
        try:
            status = agent_status(lab, rec.name, settings)
        except InmeshError as exc:
            errors.append(f"agent: {exc}")
    if zt_pid is not None and netns_ok:
        try:
            dump = ztunnel_config_dump(lab, rec.name, settings)
        except InmeshError as exc:
            errors.append(f"ztunnel: {exc}")
    return NodeLive(
        netns_exists=netns_ok,
        agent_pid=agent_pid,
        agent_ready=agent_pid is not None and agent_ready(layout, settings),
        agent_status=status,
        ztunnel_pid=zt_pid,
        ztunnel_ready=zt_pid is not None and netns_ok and ztunnel_ready(layout, settings),
        config_dump=dump,
        errors=tuple(errors),
    )


def observe_controlplane(
    lab: LabLayout, state: LabState, settings: LabSettings
) -> ControlPlaneLive:
    pid = procs.running_pid(state.processes.get(CONTROLPLANE))
    if pid is None or not state.controlplane_socket:
        return ControlPlaneLive(pid=pid)
    creds = probe_credentials(lab, state)
    if not creds.exists():
        return ControlPlaneLive(pid, errors=(f"no node credential at {creds} to probe with",))
    if controlplane_ready(state.controlplane_socket, creds, settings.http_timeout_s):
        return ControlPlaneLive(pid, ready=True)
    why = f"no mutual-TLS handshake on {state.controlplane_target} within"
    return ControlPlaneLive(pid, errors=(f"{why} {settings.http_timeout_s:g}s",))
