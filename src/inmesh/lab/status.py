"""`inmesh lab status`, assembled: the lab's records + the store + what the control plane,
agents and ztunnels say.

Pure: takes the observations (`NodeLive`, `ControlPlaneLive`, gathered by `observe`) and returns
a `LabStatus` whose every live field comes from a process's own answer; "unknown" when it did
not answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inmesh.cluster.enrollment import decide
from inmesh.cluster.model import ClusterView, PodMeta
from inmesh.errors import ConfigError
from inmesh.identity import SpiffeId
from inmesh.lab.cniconf import NodeNetwork
from inmesh.lab.layout import controlplane_netns_name, netns_path, node_netns_name
from inmesh.lab.meshview import CertificateStatus, certificate_of, tunnel_of, xds_link_of
from inmesh.lab.state import LabState, PodRecord

UNKNOWN = "unknown"
NOT_ENROLLED = "no"
NO_PROXY = "-"


@dataclass(frozen=True)
class NodeLive:
    """What was observed on one node, raw: process liveness and the JSON they answered."""

    netns_exists: bool = False
    agent_pid: int | None = None
    agent_ready: bool = False
    agent_status: Mapping[str, Any] | None = None
    ztunnel_pid: int | None = None
    ztunnel_ready: bool = False
    config_dump: Mapping[str, Any] | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class ControlPlaneLive:
    """What was observed of the control plane: is the recorded process ours and running, and
    does it complete a mutual-TLS handshake with a node credential."""

    pid: int | None = None
    ready: bool = False
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessStatus:
    role: str
    pid: int | None
    """The pid if the recorded process is running, else None."""
    ready: bool

    @property
    def state(self) -> str:
        if self.pid is None:
            return "down"
        return "ready" if self.ready else "not ready"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "running": self.pid is not None, "ready": self.ready}


@dataclass(frozen=True)
class NodeStatus:
    name: str
    netns: str
    netns_exists: bool
    pod_cidr: str
    agent: ProcessStatus
    ztunnel: ProcessStatus
    backend: str | None
    ztunnel_connections: int | None
    errors: tuple[str, ...] = ()
    xds: str = UNKNOWN
    """ztunnel's discovery stream to the control plane: synced, connected, disconnected, '-'."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "netns": self.netns,
            "netnsExists": self.netns_exists,
            "podCidr": self.pod_cidr,
            "agent": self.agent.to_json(),
            "ztunnel": self.ztunnel.to_json(),
            "backend": self.backend,
            "ztunnelConnections": self.ztunnel_connections,
            "xds": self.xds,
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class ControlPlaneStatus:
    process: ProcessStatus
    listen: str
    """The gRPC target proxies dial (``unix:/path``)."""
    netns: str
    trust_domain: str
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.process.to_json(),
            "listen": self.listen,
            "netns": self.netns,
            "trustDomain": self.trust_domain,
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class PodStatus:
    uid: str
    name: str
    namespace: str
    node: str
    phase: str
    ips: tuple[str, ...]
    netns: str | None
    labels: Mapping[str, str]
    wants_mesh: bool
    reason: str
    enrollment: str
    """The agent's word: enrolled | pending | failed | no | unknown (agent did not answer)."""
    enrollment_error: str | None
    proxy: str
    """ztunnel's word: its workload state (e.g. Up, Pending), '-' if it has none, or unknown."""
    certificate: CertificateStatus = field(default_factory=CertificateStatus.none)
    """ztunnel's word on the certificate of the pod's identity (mesh pods only)."""
    tunnel: str = UNKNOWN
    """How the pod's node's ztunnel knows it from discovery: HBONE, NONE, '-' or unknown."""

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "namespace": self.namespace,
            "node": self.node,
            "phase": self.phase,
            "ips": list(self.ips),
            "netns": self.netns,
            "labels": dict(self.labels),
            "wantsMesh": self.wants_mesh,
            "reason": self.reason,
            "enrollment": self.enrollment,
            "enrollmentError": self.enrollment_error,
            "proxy": self.proxy,
            "certificate": self.certificate.to_json() if self.certificate.identity else None,
            "tunnel": self.tunnel,
        }


@dataclass(frozen=True)
class LabStatus:
    root: str
    exists: bool
    backend: str | None = None
    controlplane: ControlPlaneStatus | None = None
    nodes: tuple[NodeStatus, ...] = ()
    pods: tuple[PodStatus, ...] = ()
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "exists": self.exists,
            "backend": self.backend,
            "controlplane": self.controlplane.to_json() if self.controlplane else None,
            "nodes": [n.to_json() for n in self.nodes],
            "pods": [p.to_json() for p in self.pods],
            "namespaces": {k: dict(v) for k, v in self.namespaces.items()},
        }


def _node_status(name: str, index: int, live: NodeLive) -> NodeStatus:
    agent = live.agent_status or {}
    conns = agent.get("ztunnelConnections")
    backend = agent.get("backend")
    return NodeStatus(
        name=name,
        netns=node_netns_name(name),
        netns_exists=live.netns_exists,
        pod_cidr=str(NodeNetwork(index).pod_cidr),
        agent=ProcessStatus("agent", live.agent_pid, live.agent_ready),
        ztunnel=ProcessStatus("ztunnel", live.ztunnel_pid, live.ztunnel_ready),
        backend=str(backend) if backend is not None else None,
        ztunnel_connections=int(conns) if isinstance(conns, int) else None,
        errors=live.errors,
        xds=xds_link_of(live.config_dump),
    )


def enrollment_of(uid: str, agent_status: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """(state, error) of a pod according to the agent's /status document."""
    if agent_status is None:
        return UNKNOWN, None
    pods = agent_status.get("pods")
    entry = pods.get(uid) if isinstance(pods, Mapping) else None
    if not isinstance(entry, Mapping):
        return NOT_ENROLLED, None
    err = entry.get("error")
    return str(entry.get("state", UNKNOWN)), str(err) if err else None


def proxy_state_of(uid: str, config_dump: Mapping[str, Any] | None) -> str:
    """A pod's proxy state according to ztunnel's /config_dump `workloadState`."""
    if config_dump is None:
        return UNKNOWN
    states = config_dump.get("workloadState")
    entry = states.get(uid) if isinstance(states, Mapping) else None
    if not isinstance(entry, Mapping):
        return NO_PROXY
    return str(entry.get("state", UNKNOWN))


def _pod_meta(uid: str, view: ClusterView, rec: PodRecord | None) -> PodMeta:
    pod = view.pods.get(uid)
    if pod is not None:
        return pod
    assert rec is not None
    return PodMeta(uid, rec.name, rec.namespace, rec.node, phase="NotInStore")


def identity_of(pod: PodMeta, trust_domain: str) -> str:
    """The SPIFFE ID a mesh pod runs as, "" if its names can not form one."""
    try:
        return SpiffeId.for_workload(pod.namespace, pod.service_account, trust_domain).uri
    except ConfigError:
        return ""


def _pod_status(
    pod: PodMeta, rec: PodRecord | None, view: ClusterView, live: NodeLive, trust_domain: str
) -> PodStatus:
    decision = decide(pod, view.namespace(pod.namespace))
    enrollment, error = enrollment_of(pod.uid, live.agent_status)
    identity = identity_of(pod, trust_domain) if decision.enroll else ""
    return PodStatus(
        uid=pod.uid,
        name=pod.name,
        namespace=pod.namespace,
        node=pod.node,
        phase=pod.phase,
        ips=pod.ips,
        netns=pod.netns or (netns_path(rec.netns) if rec else None),
        labels=dict(pod.labels),
        wants_mesh=decision.enroll,
        reason=decision.reason,
        enrollment=enrollment,
        enrollment_error=error,
        proxy=proxy_state_of(pod.uid, live.config_dump),
        certificate=certificate_of(identity, pod.uid, live.config_dump),
        tunnel=tunnel_of(pod.namespace, pod.name, live.config_dump),
    )


def _controlplane_status(state: LabState, live: ControlPlaneLive) -> ControlPlaneStatus | None:
    if not state.controlplane_target:
        return None  # a lab made before the control plane existed, not yet brought up again
    return ControlPlaneStatus(
        process=ProcessStatus("controlplane", live.pid, live.ready),
        listen=state.controlplane_target,
        netns=controlplane_netns_name(state.node_prefix),
        trust_domain=state.trust_domain,
        errors=live.errors,
    )


def assemble(
    root: str,
    state: LabState | None,
    view: ClusterView,
    live: Mapping[str, NodeLive],
    controlplane: ControlPlaneLive | None = None,
) -> LabStatus:
    """The status of the lab at ``root``; ``state`` is None if there is no lab there."""
    if state is None:
        return LabStatus(root=root, exists=False)
    nodes = tuple(
        _node_status(n.name, n.index, live.get(n.name, NodeLive()))
        for n in sorted(state.nodes.values(), key=lambda n: n.index)
    )
    uids = sorted(set(view.pods) | set(state.pods))
    pods = []
    for uid in uids:
        rec = state.pods.get(uid)
        pod = _pod_meta(uid, view, rec)
        node_live = live.get(pod.node, NodeLive())
        pods.append(_pod_status(pod, rec, view, node_live, state.trust_domain))
    pods.sort(key=lambda p: (p.node, p.namespace, p.name))
    return LabStatus(
        root=root,
        exists=True,
        backend=state.backend,
        controlplane=_controlplane_status(state, controlplane or ControlPlaneLive()),
        nodes=nodes,
        pods=tuple(pods),
        namespaces={name: dict(ns.labels) for name, ns in sorted(view.namespaces.items())},
    )
