"""The lab end to end on real namespaces: up, pods over the bridge, exec, status, del, down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

from inmesh.cluster.store import FileClusterStore
from inmesh.lab import namespaces, procs
from inmesh.lab._poll import poll_until
from inmesh.lab.layout import netns_path
from inmesh.lab.pods import PodAddFailed, PodSpec
from inmesh.lab.procs import ProcState
from inmesh.lab.state import PodRecord
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import LabEnv, processes_mentioning


def _pids(env: LabEnv) -> list[int]:
    return [p.pid for n in env.lab.state.load().nodes.values() for p in n.processes.values()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _tcp_between(env: LabEnv, server: PodRecord, server_ip: str, client: PodRecord) -> str:
    """Listen in one pod, connect from the other over the bridge; the peer address seen."""
    listener = run_in_netns(netns_path(server.netns), socket.socket)
    conn = None
    try:
        listener.bind((server_ip, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client_sock = run_in_netns(netns_path(client.netns), socket.socket)
        with client_sock:
            client_sock.settimeout(5)
            client_sock.connect((server_ip, port))
            listener.settimeout(5)
            conn, peer = listener.accept()
            client_sock.sendall(b"ping")
            assert conn.recv(4) == b"ping"
        return str(peer[0])
    finally:
        if conn is not None:
            conn.close()
        listener.close()


def test_up_pods_exec_status_del_down(lab_env: LabEnv) -> None:
    """A full cycle through the real CLI leaves no namespace, process or file behind."""
    env = lab_env
    env.up()
    pids = _pids(env)
    assert len(pids) == 2
    assert all(_alive(p) for p in pids)
    assert env.node_netns in _netns_names()
    routes = subprocess.run(["ip", "-n", env.node_netns, "route"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert "default" not in routes  # the node netns has no way out

    env.cli("pod", "add", "web")
    env.cli("pod", "add", "cli", "-n", "shop", "-l", "app=cli", "--sa", "cli-sa")
    store = FileClusterStore(str(env.lab.layout.store)).view()
    web, cli = store.pod_by_name("default", "web"), store.pod_by_name("shop", "cli")
    assert web is not None
    assert cli is not None
    assert web.phase == cli.phase == "Running"
    assert cli.labels == {"app": "cli"}
    assert cli.service_account == "cli-sa"
    assert web.ips[0].startswith("10.244.1.")
    assert cli.ips[0].startswith("10.244.1.")
    assert web.ips != cli.ips

    web_rec = env.lab.pods.find("default", "web")
    cli_rec = env.lab.pods.find("shop", "cli")
    assert _tcp_between(env, web_rec, web.ips[0], cli_rec) == cli.ips[0]

    shown = env.cli("pod", "exec", "web", "--", "ip", "-br", "addr", "show", "eth0").stdout
    assert web.ips[0] in shown
    assert env.cli("pod", "exec", "web", "--", "sh", "-c", "exit 7", check=False).returncode == 7

    status = json.loads(env.cli("status", "--json").stdout)
    (node,) = status["nodes"]
    assert node["agent"]["ready"]
    assert node["ztunnel"]["ready"]
    assert node["ztunnelConnections"] == 1
    pods = {p["name"]: p for p in status["pods"]}
    assert pods["web"]["ips"] == list(web.ips)
    assert pods["web"]["enrollment"] == "no"
    assert pods["web"]["proxy"] == "-"

    env.cli("pod", "del", "web")
    assert web_rec.netns not in _netns_names()
    assert FileClusterStore(str(env.lab.layout.store)).view().pod_by_name("default", "web") is None

    env.cli("down")
    names = _netns_names()
    assert env.node_netns not in names
    assert cli_rec.netns not in names
    assert not any(_alive(p) for p in pids)
    assert processes_mentioning(str(env.root)) == []
    assert not env.root.exists()
    assert "no lab at" in env.cli("down").stdout


def test_up_again_restarts_only_what_died(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    node = env.lab.state.load().nodes[env.node]
    agent, ztunnel = node.processes["agent"], node.processes["ztunnel"]
    env.messages.clear()
    env.lab.up(node_prefix=env.prefix)
    assert env.messages == []  # nothing was missing

    os.kill(ztunnel.pid, signal.SIGKILL)  # a process this test's lab started
    assert poll_until(lambda: procs.state_of(ztunnel) is ProcState.EXITED, 5, 0.05)
    env.lab.up(node_prefix=env.prefix)
    assert any("restarted ztunnel" in m for m in env.messages)
    now = env.lab.state.load().nodes[env.node].processes
    assert now["agent"] == agent
    assert now["ztunnel"].pid != ztunnel.pid
    assert env.lab.status().nodes[0].ztunnel.ready


def test_down_after_a_crash_mid_pod_add(lab_env: LabEnv) -> None:
    """A sandbox recorded and created but never finished, and a dead agent: down still cleans."""
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    rec = PodRecord("deadbeef-0000-4000-8000-000000000001", "half", "default", env.node,
                    "inmesh-pod-deadbeef0000", "c" * 64)  # fmt: skip
    env.lab.state.update(lambda s: s.with_pod(rec))
    namespaces.ensure(rec.netns)
    agent = env.lab.state.load().nodes[env.node].processes["agent"]
    os.kill(agent.pid, signal.SIGKILL)
    pids = _pids(env)

    result = env.lab.down()
    assert result.existed
    names = _netns_names()
    assert rec.netns not in names
    assert env.node_netns not in names
    assert not any(_alive(p) for p in pids)
    assert not env.root.exists()
    assert env.lab.down().existed is False


def test_failed_add_leaves_nothing_and_reports_the_plugin_error(
    lab_env: LabEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    node = env.lab.state.load().nodes[env.node]
    env.lab.nodes.stop_process(node, "agent")  # the plugin cannot reach the agent: ADD fails
    created: list[str] = []
    real_ensure = namespaces.ensure

    def recording_ensure(name: str) -> bool:
        created.append(name)
        return real_ensure(name)

    monkeypatch.setattr(namespaces, "ensure", recording_ensure)
    with pytest.raises(PodAddFailed, match="code 11"):
        env.lab.add_pod(PodSpec("web", labels={"istio.io/dataplane-mode": "ambient"}))
    assert created
    assert not set(created) & _netns_names()
    assert env.lab.state.load().pods == {}
    assert FileClusterStore(str(env.lab.layout.store)).view().pods == {}

    cli = env.cli("pod", "add", "web2", "-l", "istio.io/dataplane-mode=ambient", check=False)
    assert cli.returncode == 1
    assert "code 11" in cli.stderr
    assert cli.stderr.count("\n") == 1


def test_up_rebuilds_a_deleted_node_netns(lab_env: LabEnv) -> None:
    """Processes left in a netns that was deleted serve no one: up replaces them."""
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    old = env.lab.state.load().nodes[env.node].processes
    subprocess.run(["ip", "netns", "del", env.node_netns], check=True)
    env.lab.up(node_prefix=env.prefix)
    assert env.node_netns in _netns_names()
    new = env.lab.state.load().nodes[env.node].processes
    assert set(new) == {"agent", "ztunnel"}
    assert all(new[r].pid != old[r].pid for r in old)
    assert not any(_alive(p.pid) for p in old.values())
    node = env.lab.status().nodes[0]
    assert node.agent.ready
    assert node.ztunnel.ready
