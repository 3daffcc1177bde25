"""Two lab nodes: pods on different nodes reach each other over the fabric, and only there."""

from __future__ import annotations

import socket

from inmesh.lab import namespaces
from inmesh.lab.fabric import fabric_netns_name
from inmesh.lab.layout import netns_path
from inmesh.lab.pods import PodSpec
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import LabEnv


def test_pods_on_two_nodes_talk_through_the_fabric(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(nodes=2, node_prefix=env.prefix)
    a = env.lab.add_pod(PodSpec("a", node=f"{env.prefix}1"))
    b = env.lab.add_pod(PodSpec("b", node=f"{env.prefix}2"))
    assert a.ips[0].startswith("10.244.1.")
    assert b.ips[0].startswith("10.244.2.")
    server = run_in_netns(netns_path(env.lab.pods.find("default", "b").netns), socket.socket)
    with server:
        server.bind((b.ips[0], 9000))
        server.listen(1)
        server.settimeout(5)
        client = run_in_netns(netns_path(env.lab.pods.find("default", "a").netns), socket.socket)
        with client:
            client.settimeout(5)
            client.connect((b.ips[0], 9000))
            conn, peer = server.accept()
            with conn:
                client.sendall(b"across")
                assert conn.recv(6) == b"across"
    assert peer[0] == a.ips[0]
    assert namespaces.exists(fabric_netns_name(env.prefix))
    env.lab.down()
    assert not namespaces.exists(fabric_netns_name(env.prefix))
