"""The node agent as a real process: enrollment by label, CNI ADD semantics, restart, drift.

The agent runs in a node netns; the pod is a netns with an address; the proxy is a recording ZDS
client. Rules are checked in the kernel with the rule backend's own verification.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inmesh.cluster.model import PodMeta
from inmesh.redirect import RedirectSpec, select_backend
from tests.system.agent.harness import AgentProcess, RecordingProxy, http_call, wait_for
from tests.system.nshelpers import NetnsFactory

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
SPEC = RedirectSpec(ipv4=True)


@pytest.fixture(params=["iptables", "nftables"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def world(netns_factory: NetnsFactory, tmp_path: Path, backend_name: str) -> Iterator[tuple[AgentProcess, str, str]]:
    node = netns_factory.path(netns_factory.create("node"))
    pod = netns_factory.create("pod")
    netns_factory.exec(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    netns_factory.exec(pod, "ip", "addr", "add", "10.252.0.2/24", "dev", "eth0")
    netns_factory.exec(pod, "ip", "link", "set", "eth0", "up")
    agent = AgentProcess(node, tmp_path, backend=backend_name)
    try:
        yield agent, netns_factory.path(pod), str(uuid.uuid4())
    finally:
        agent.stop()


def pod_meta(uid: str, netns: str | None, labels: dict[str, str] | None = None, phase: str = "Running") -> PodMeta:
    return PodMeta(uid=uid, name="web", namespace="shop", node="n1", service_account="web-sa",
                   labels=labels or {}, ips=("10.252.0.2",), netns=netns, phase=phase)


def state_of(agent: AgentProcess, uid: str) -> str | None:
    pod = agent.status()["pods"].get(uid)
    return None if pod is None else str(pod["state"])


def test_running_pod_follows_its_namespace_label(world: tuple[AgentProcess, str, str], backend_name: str) -> None:
    agent, pod_ns, uid = world
    backend = select_backend(backend_name)
    agent.store.put_pod(pod_meta(uid, pod_ns))
    agent.start()
    proxy = RecordingProxy(agent.zds_socket).start()
    try:
        agent.store.set_namespace_labels("shop", AMBIENT)
        wait_for(lambda: state_of(agent, uid) == "enrolled", what="enrollment")
        assert backend.verify(pod_ns, SPEC) == []
        assert [a[0] for a in proxy.adds] == [uid]
        assert proxy.adds[0][1].service_account == "web-sa"
        assert agent.status()["backend"] == backend_name
        redirection = "ambient.istio.io/redirection"
        wait_for(lambda: agent.store.view().pods[uid].annotations.get(redirection) == "enabled",
                 what="redirection annotation")

        agent.store.set_namespace_labels("shop", {})
        wait_for(lambda: state_of(agent, uid) is None, what="un-enrollment")
        assert not backend.installed(pod_ns)
        assert proxy.dels == [uid]
        assert redirection not in agent.store.view().pods[uid].annotations
    finally:
        proxy.stop()


def test_cmdadd_fails_closed_until_a_proxy_takes_the_pod(world: tuple[AgentProcess, str, str], backend_name: str) -> None:
    agent, pod_ns, uid = world
    backend = select_backend(backend_name)
    agent.store.put_pod(pod_meta(uid, None, AMBIENT, phase="Pending"))
    agent.start()
    event = {"Netns": pod_ns, "PodName": "web", "PodNamespace": "shop", "PodUID": uid,
             "ContainerID": "c1", "IPs": [{"Address": {"IP": "10.252.0.2", "Mask": "////AA=="}}]}
    code, body = http_call(agent.plugin_socket, "POST", "/cmdadd", event)
    assert code == 500
    assert b"proxy did not take it" in body
    assert backend.verify(pod_ns, SPEC) == []  # rules stay: the pod's traffic is refused, not bypassed

    proxy = RecordingProxy(agent.zds_socket).start()
    try:
        wait_for(lambda: agent.status()["ztunnelConnections"] == 1, what="proxy connection")
        code, body = http_call(agent.plugin_socket, "POST", "/cmdadd", event)
        assert (code, body) == (200, b'{"enrolled": true, "reason": "pod label istio.io/dataplane-mode=ambient"}\n')
        assert state_of(agent, uid) == "enrolled"

        unknown = {**event, "PodName": "ghost", "PodUID": ""}
        code, body = http_call(agent.plugin_socket, "POST", "/cmdadd", unknown)
        assert code == 500
        assert b"not known" in body
        code, _ = http_call(agent.plugin_socket, "POST", "/cmdadd", {"PodName": 3})
        assert code == 400

        code, _ = http_call(agent.plugin_socket, "POST", "/cmdcheck", event)
        assert code == 200
        code, _ = http_call(agent.plugin_socket, "POST", "/cmddel", event)
        assert code == 200
        assert state_of(agent, uid) is None
        assert uid in proxy.dels
        code, _ = http_call(agent.plugin_socket, "POST", "/cmddel", {**event, "Netns": ""})
        assert code == 200  # DEL is idempotent
    finally:
        proxy.stop()


def test_restart_keeps_rules_and_resends_the_snapshot(world: tuple[AgentProcess, str, str], backend_name: str) -> None:
    agent, pod_ns, uid = world
    backend = select_backend(backend_name)
    agent.store.put_pod(pod_meta(uid, pod_ns, AMBIENT))
    agent.start()
    proxy = RecordingProxy(agent.zds_socket).start()
    try:
        wait_for(lambda: state_of(agent, uid) == "enrolled", what="enrollment")
        agent.stop()
        assert backend.verify(pod_ns, SPEC) == []  # a stopped agent leaves pods redirected
        snapshots_before = len(proxy.snapshots)
        agent.start()
        wait_for(lambda: len(proxy.snapshots) > snapshots_before, what="a fresh snapshot")
        assert uid in proxy.snapshots[-1]
        wait_for(lambda: state_of(agent, uid) == "enrolled", what="re-enrollment")
        assert backend.verify(pod_ns, SPEC) == []  # reconciled, not installed twice
    finally:
        proxy.stop()


def test_rule_drift_is_repaired(world: tuple[AgentProcess, str, str], backend_name: str, netns_factory: NetnsFactory) -> None:
    agent, pod_ns, uid = world
    backend = select_backend(backend_name)
    agent.store.put_pod(pod_meta(uid, pod_ns, AMBIENT))
    agent.start()
    proxy = RecordingProxy(agent.zds_socket).start()
    try:
        wait_for(lambda: state_of(agent, uid) == "enrolled", what="enrollment")
        name = pod_ns.rsplit("/", 1)[1]
        if backend_name == "nftables":
            netns_factory.exec(name, "nft", "flush", "chain", "inet", "istio-ambient-nat", "istio-output")
        else:
            netns_factory.exec(name, "iptables", "-t", "nat", "-F", "ISTIO_OUTPUT")
        assert backend.verify(pod_ns, SPEC) != []
        wait_for(lambda: backend.verify(pod_ns, SPEC) == [], what="drift repair")
    finally:
        proxy.stop()


def test_netns_found_by_scan_with_ownership_check(world: tuple[AgentProcess, str, str], backend_name: str, netns_factory: NetnsFactory) -> None:
    agent, pod_ns, uid = world
    decoy = netns_factory.create("decoy")
    netns_factory.exec(decoy, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    netns_factory.exec(decoy, "ip", "addr", "add", "10.252.0.9/24", "dev", "eth0")
    backend = select_backend(backend_name)
    # the source names the decoy's netns (a lie) : only the pod's own netns holds its IP
    agent.store.put_pod(pod_meta(uid, netns_factory.path(decoy), AMBIENT))
    agent.start()
    proxy = RecordingProxy(agent.zds_socket).start()
    try:
        wait_for(lambda: state_of(agent, uid) == "enrolled", what="enrollment")
        assert agent.status()["pods"][uid]["netns"] == pod_ns
        assert backend.verify(pod_ns, SPEC) == []
        assert not backend.installed(netns_factory.path(decoy))
    finally:
        proxy.stop()
