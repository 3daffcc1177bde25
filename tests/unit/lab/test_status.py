"""Status assembly: live fields come only from what the agent and ztunnel answered."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from inmesh.cluster.model import ClusterView, NamespaceMeta, PodMeta
from inmesh.lab.state import LabState, NodeRecord, PodRecord
from inmesh.lab.status import (
    NO_PROXY,
    NOT_ENROLLED,
    UNKNOWN,
    ControlPlaneLive,
    NodeLive,
    assemble,
    enrollment_of,
    proxy_state_of,
)

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def _view(*pods: PodMeta, ns_labels: dict[str, dict[str, str]] | None = None) -> ClusterView:
    nss = {n: NamespaceMeta(n, MappingProxyType(lbl)) for n, lbl in (ns_labels or {}).items()}
    return ClusterView(MappingProxyType({p.uid: p for p in pods}), MappingProxyType(nss))


def _state(*uids: str) -> LabState:
    s = LabState().with_node(NodeRecord("n1", 1))
    for uid in uids:
        s = s.with_pod(PodRecord(uid, f"pod-{uid}", "default", "n1", f"inmesh-pod-{uid}", "c"))
    return s


AGENT = {
    "node": "n1",
    "ready": True,
    "backend": "nftables",
    "ztunnelConnections": 1,
    "pods": {
        "u1": {"name": "a", "namespace": "default", "state": "enrolled", "ips": ["10.244.1.2"],
               "netns": "/run/netns/x", "error": None},
        "u2": {"name": "b", "namespace": "default", "state": "failed", "ips": [],
               "netns": "", "error": "rules failed"},
    },
}  # fmt: skip
DUMP = {"workloadState": {"u1": {"info": {"name": "a"}, "state": "Up"}}}


def test_enrollment_and_proxy_state_come_from_the_processes() -> None:
    assert enrollment_of("u1", AGENT) == ("enrolled", None)
    assert enrollment_of("u2", AGENT) == ("failed", "rules failed")
    assert enrollment_of("u3", AGENT) == (NOT_ENROLLED, None)
    assert enrollment_of("u1", None) == (UNKNOWN, None)
    assert proxy_state_of("u1", DUMP) == "Up"
    assert proxy_state_of("u2", DUMP) == NO_PROXY
    assert proxy_state_of("u1", None) == UNKNOWN
    assert proxy_state_of("u1", {"workloadState": "garbage"}) == NO_PROXY


def test_assemble_joins_store_records_and_live_answers() -> None:
    a = PodMeta("u1", "pod-u1", "default", "n1", labels=AMBIENT, ips=("10.244.1.2",),
                netns="/run/netns/inmesh-pod-u1")  # fmt: skip
    b = PodMeta("u2", "pod-u2", "default", "n1", ips=("10.244.1.3",))
    live = NodeLive(netns_exists=True, agent_pid=10, agent_ready=True, agent_status=AGENT,
                    ztunnel_pid=11, ztunnel_ready=True, config_dump=DUMP)  # fmt: skip
    status = assemble("/r", _state("u1", "u2"), _view(a, b), {"n1": live})
    (node,) = status.nodes
    assert node.agent.state == "ready"
    assert node.backend == "nftables"
    assert node.ztunnel_connections == 1
    assert node.pod_cidr == "10.244.1.0/24"
    by_uid = {p.uid: p for p in status.pods}
    assert by_uid["u1"].wants_mesh
    assert by_uid["u1"].enrollment == "enrolled"
    assert by_uid["u1"].proxy == "Up"
    assert not by_uid["u2"].wants_mesh
    assert by_uid["u2"].enrollment == "failed"
    assert by_uid["u2"].enrollment_error == "rules failed"
    assert by_uid["u2"].netns == "/run/netns/inmesh-pod-u2"  # from the sandbox record
    doc = status.to_json()
    assert doc["nodes"][0]["agent"] == {"pid": 10, "running": True, "ready": True}
    assert {p["uid"] for p in doc["pods"]} == {"u1", "u2"}


def test_dead_processes_make_live_fields_unknown() -> None:
    pod = PodMeta("u1", "pod-u1", "shop", "n1")
    status = assemble("/r", _state(), _view(pod, ns_labels={"shop": AMBIENT}), {})
    (node,) = status.nodes
    assert node.agent.state == "down"
    assert node.backend is None
    (p,) = status.pods
    assert p.wants_mesh  # through the namespace label
    assert "namespace" in p.reason
    assert (p.enrollment, p.proxy) == (UNKNOWN, UNKNOWN)
    assert status.namespaces == {"shop": AMBIENT}


def test_a_sandbox_without_a_store_entry_is_listed() -> None:
    status = assemble("/r", _state("u9"), _view(), {})
    (p,) = status.pods
    assert p.phase == "NotInStore"
    assert p.name == "pod-u9"


def test_no_lab() -> None:
    status = assemble("/r", None, _view(), {})
    assert status.to_json() == {
        "root": "/r", "exists": False, "backend": None, "controlplane": None, "nodes": [],
        "pods": [], "namespaces": {},
    }  # fmt: skip


def test_control_plane_and_certificates_come_from_their_processes() -> None:
    a = PodMeta("u1", "pod-u1", "default", "n1", service_account="web", labels=AMBIENT)
    b = PodMeta("u2", "pod-u2", "default", "n1")
    state = replace(_state("u1", "u2"), controlplane_socket="/r/cp.sock", node_prefix="n")
    web = "spiffe://cluster.local/ns/default/sa/web"
    dump = {**DUMP, "certificates": [{"identity": web, "state": "available",
                                      "not_after": "2030-01-01T00:00:00+00:00"}]}  # fmt: skip
    live = NodeLive(ztunnel_pid=11, ztunnel_ready=True, config_dump=dump)
    status = assemble("/r", state, _view(a, b), {"n1": live}, ControlPlaneLive(7, ready=True))
    assert status.controlplane is not None
    assert status.controlplane.process.state == "ready"
    by_uid = {p.uid: p for p in status.pods}
    assert by_uid["u1"].certificate.identity == web
    assert by_uid["u1"].certificate.state == "available"
    assert by_uid["u2"].certificate.state == "-"  # not in the mesh: no identity
    doc = status.to_json()
    assert doc["controlplane"] == {
        "pid": 7, "running": True, "ready": True, "listen": "unix:/r/cp.sock",
        "netns": "inmesh-ncp", "trustDomain": "cluster.local", "errors": [],
    }  # fmt: skip
    assert doc["pods"][0]["certificate"]["notAfter"] == "2030-01-01T00:00:00+00:00"
    assert doc["pods"][1]["certificate"] is None


def test_a_dead_control_plane_is_down_and_an_old_lab_has_none() -> None:
    state = replace(_state(), controlplane_socket="/r/cp.sock")
    cp = assemble("/r", state, _view(), {}).controlplane
    assert cp is not None
    assert cp.process.state == "down"
    assert assemble("/r", _state(), _view(), {}).controlplane is None  # lab.json version 1
