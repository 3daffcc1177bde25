"""Failure behaviour of a whole lab node (issue 2, section 5), each proven with real traffic.

- proxy down: enrolled pods' outbound and inbound connections are refused, never bypassed;
- agent down: new mesh pods cannot start, running pods keep working (and non-mesh pods start);
- pod deleted with open connections: its proxies stop, other pods are untouched;
- garbage on the ZDS socket: the peer is dropped, the real proxy and every pod keep working.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from inmesh.errors import InmeshError
from inmesh.lab import procs
from inmesh.lab.layout import netns_path
from inmesh.lab.pods import PodSpec
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import LabEnv

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
PORT = 8080


def wait_for(cond: object, timeout: float = 15.0, what: str = "condition") -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pod_netns(env: LabEnv, name: str, namespace: str = "default") -> str:
    return netns_path(env.lab.pods.find(namespace, name).netns)


@contextmanager
def listener(env: LabEnv, name: str, ip: str) -> Iterator[socket.socket]:
    sock = run_in_netns(pod_netns(env, name), socket.socket)
    with sock:
        sock.bind((ip, PORT))
        sock.listen(16)
        sock.settimeout(5)
        yield sock


def connect(env: LabEnv, name: str, ip: str) -> socket.socket:
    """A connection from pod ``name`` to ip:PORT (raises ConnectionRefusedError if refused)."""
    sock = run_in_netns(pod_netns(env, name), socket.socket)
    try:
        sock.settimeout(5)
        sock.connect((ip, PORT))
    except BaseException:
        sock.close()
        raise
    return sock


def echo_once(client: socket.socket, server_side: socket.socket, data: bytes) -> None:
    client.sendall(data)
    assert server_side.recv(len(data)) == data
    server_side.sendall(data)
    assert client.recv(len(data)) == data


def stop_process(env: LabEnv, role: str) -> None:
    rec = env.lab.state.load().nodes[env.node].processes[role]
    procs.stop(rec, 5.0, 0.05)


def proxy_state(env: LabEnv, name: str) -> str:
    return {p.name: p.proxy for p in env.lab.status().pods}[name]


def test_proxy_down_refuses_enrolled_pods_both_ways(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    mesh = env.lab.add_pod(PodSpec("mesh", labels=AMBIENT))
    plain = env.lab.add_pod(PodSpec("plain"))
    env.lab.add_pod(PodSpec("other"))
    stop_process(env, "ztunnel")

    with listener(env, "plain", plain.ips[0]):
        with pytest.raises(ConnectionRefusedError):
            connect(env, "mesh", plain.ips[0]).close()  # outbound from a mesh pod
        with connect(env, "other", plain.ips[0]):  # plain to plain is untouched
            pass
    with listener(env, "mesh", mesh.ips[0]), pytest.raises(ConnectionRefusedError):
        connect(env, "other", mesh.ips[0]).close()  # inbound to a mesh pod


def test_agent_down_blocks_new_mesh_pods_but_running_pods_keep_working(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    mesh = env.lab.add_pod(PodSpec("mesh", labels=AMBIENT))
    server = env.lab.add_pod(PodSpec("server"))
    stop_process(env, "agent")

    with pytest.raises(InmeshError, match="held back"):
        env.lab.add_pod(PodSpec("late-mesh", labels=AMBIENT))
    assert "late-mesh" not in {p.name for p in env.lab.status().pods}
    late_plain = env.lab.add_pod(PodSpec("late-plain"))  # the plugin reads the pod source
    assert late_plain.ips

    with listener(env, "server", server.ips[0]) as lsock:
        with connect(env, "mesh", server.ips[0]) as c:
            conn, peer = lsock.accept()
            with conn:
                echo_once(c, conn, b"still meshed")
        assert peer[0] == mesh.ips[0]
    assert proxy_state(env, "mesh") == "Up"


def test_deleting_a_pod_with_open_connections_stops_only_its_proxies(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    env.lab.add_pod(PodSpec("doomed", labels=AMBIENT))
    env.lab.add_pod(PodSpec("survivor", labels=AMBIENT))
    server = env.lab.add_pod(PodSpec("server"))

    with listener(env, "server", server.ips[0]) as lsock:
        doomed = connect(env, "doomed", server.ips[0])
        d_conn, _ = lsock.accept()
        survivor = connect(env, "survivor", server.ips[0])
        s_conn, _ = lsock.accept()
        with doomed, d_conn, survivor, s_conn:
            echo_once(doomed, d_conn, b"a")
            echo_once(survivor, s_conn, b"b")
            env.lab.delete_pod("default", "doomed")
            # the doomed pod's proxied connection is torn down (reset) by its proxy
            d_conn.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert d_conn.recv(1) == b""
            echo_once(survivor, s_conn, b"still here")
            with connect(env, "survivor", server.ips[0]) as again:
                conn, _ = lsock.accept()
                with conn:
                    echo_once(again, conn, b"new")
    assert {p.name for p in env.lab.status().pods} == {"survivor", "server"}
    assert proxy_state(env, "survivor") == "Up"


def test_garbage_on_the_zds_socket_leaves_the_node_working(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    zds = str(env.lab.layout.node(env.node).zds_socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as silent:
        silent.connect(zds)  # a peer that never says Hello, left open meanwhile
        for junk in (b"\xff\x00garbage", b"\x0a" * 2000):  # not a Hello; over 1024 bytes
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(zds)
                s.send(junk)
                s.settimeout(10)
                assert s.recv(1024) == b""  # the agent drops that peer
        agent = next(n for n in env.lab.status().nodes if n.name == env.node)
        assert agent.ztunnel_connections == 1  # the real proxy's connection is untouched
    mesh = env.lab.add_pod(PodSpec("mesh", labels=AMBIENT))
    server = env.lab.add_pod(PodSpec("server"))
    with listener(env, "server", server.ips[0]) as lsock, connect(env, "mesh", server.ips[0]) as c:
        conn, peer = lsock.accept()
        with conn:
            echo_once(c, conn, b"ok")
    assert peer[0] == mesh.ips[0]
    assert proxy_state(env, "mesh") == "Up"
