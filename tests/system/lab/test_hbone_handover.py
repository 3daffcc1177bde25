"""A ztunnel handover on the server's node, with HBONE tunnels from another node in flight.

A second ztunnel starts on node 2 and takes the pods over (the agent hands them to the newest
proxy; both hold the pods' ports for a moment), then the first gets SIGTERM and drains. Its
inbound HBONE connections send GOAWAY: node 1's pool stops opening tunnels on them, so a
tunnel opened during the drain goes to the successor and outlives the old ztunnel, and the
tunnel that was open before keeps working until it ends, after which the old ztunnel exits
without waiting for its drain deadline."""

from __future__ import annotations

import os
import signal
import socket
import time

from inmesh.constants import LABEL_DATAPLANE_MODE
from inmesh.errors import InmeshError
from inmesh.lab import procs
from inmesh.lab._poll import poll_until
from inmesh.lab.layout import netns_path
from inmesh.lab.meshview import tunnel_of
from inmesh.lab.nodes import ztunnel_command
from inmesh.lab.observe import ztunnel_config_dump
from inmesh.lab.pods import PodSpec
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import LabEnv, pids_on_15008, worker_pids

AMBIENT = {LABEL_DATAPLANE_MODE: "ambient"}
APP_PORT = 8080
IO_TIMEOUT_S = 10.0
MESH_READY_TIMEOUT_S = 30.0


def _mesh_ready(env: LabEnv, node1: str) -> bool:
    pods = {p.name: p for p in env.lab.status().pods}
    if not all(pods[n].enrollment == "enrolled" and pods[n].proxy == "Up"
               for n in ("client", "server")):
        return False
    try:
        dump = ztunnel_config_dump(env.lab.layout, node1, env.lab.settings)
    except InmeshError:
        return False
    return tunnel_of("default", "server", dump) == "HBONE"


class Tunnel:
    """One app connection client -> server through the mesh, held open."""

    def __init__(self, env: LabEnv, server_ip: str, listener: socket.socket) -> None:
        client = env.lab.pods.find("default", "client")
        self.sock = run_in_netns(netns_path(client.netns), socket.socket)
        self.sock.settimeout(IO_TIMEOUT_S)
        self.sock.connect((server_ip, APP_PORT))
        self.conn: socket.socket | None = None
        self.sock.sendall(b"hello\n")
        self.conn, _ = listener.accept()
        self.conn.settimeout(IO_TIMEOUT_S)
        assert self.conn.recv(16) == b"hello\n"

    def round_trip(self, line: bytes) -> None:
        assert self.conn is not None
        self.sock.sendall(line)
        assert self.conn.recv(64) == line
        self.conn.sendall(b"re " + line)
        assert self.sock.recv(64) == b"re " + line

    def close(self) -> None:
        self.sock.close()
        if self.conn is not None:
            self.conn.close()


def test_a_ztunnel_handover_keeps_hbone_tunnels_and_moves_new_ones(lab_env: LabEnv) -> None:
    env = lab_env
    node1, node2 = f"{env.prefix}1", f"{env.prefix}2"
    env.lab.up(nodes=2, node_prefix=env.prefix)
    env.lab.add_pod(PodSpec("client", labels=AMBIENT, node=node1))
    server = env.lab.add_pod(PodSpec("server", labels=AMBIENT, node=node2))
    assert poll_until(lambda: _mesh_ready(env, node1), MESH_READY_TIMEOUT_S, 0.2), (
        f"mesh not ready: {env.lab.status().to_json()}")
    state = env.lab.state.load()
    old = state.nodes[node2].processes["ztunnel"]
    server_netns = netns_path(env.lab.pods.find("default", "server").netns)
    tunnels: list[Tunnel] = []
    successor = None
    listener = run_in_netns(server_netns, socket.socket)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", APP_PORT))
        listener.listen(16)
        listener.settimeout(IO_TIMEOUT_S)
        before = Tunnel(env, server.ips[0], listener)
        tunnels.append(before)

        # The successor: the same command line the lab uses, started beside the old one.
        cmd = ztunnel_command(env.lab.layout.node(node2), env.lab.settings,
                              state.controlplane_target, state.trust_domain)
        successor = procs.spawn_detached(cmd.argv, env.root / "successor-ztunnel.log",
                                         cmd.signature)
        new = successor.pid

        def successor_listens() -> set[int] | None:
            return pids_on_15008(server_netns, "listening") & {new, *worker_pids(new)} or None

        assert poll_until(successor_listens, 30.0, 0.1), (
            "the successor never opened the server pod's 15008")

        old_pids = {old.pid, *worker_pids(old.pid)}
        os.kill(old.pid, signal.SIGTERM)  # the old one leaves: its tunnels must survive
        # Draining has begun once the old processes closed their listeners (they send GOAWAY
        # in the same step); a tunnel that reached them before that is theirs until the
        # deadline, as with any proxy.
        assert poll_until(lambda: not pids_on_15008(server_netns, "listening") & old_pids,
                          10.0, 0.02), "the old ztunnel kept its listeners"
        during = Tunnel(env, server.ips[0], listener)  # opened while the old one drains
        tunnels.append(during)
        before.round_trip(b"old tunnel, still there\n")
        during.round_trip(b"new tunnel\n")
        assert procs.is_running(old)  # still draining: the old tunnel holds it

        before.close()  # the last tunnel on the old ztunnel: it may go now
        started = time.monotonic()
        assert poll_until(lambda: not procs.is_running(old),
                          env.lab.settings.ztunnel_drain_deadline_s + 10.0, 0.05), (
            "the old ztunnel did not exit")
        took = time.monotonic() - started
        # The tunnel opened during the drain lives on the successor: it outlives the old
        # ztunnel (had it gone over the old pooled connection, it was reset at the exit).
        during.round_trip(b"after the old ztunnel exited\n")
        fresh = Tunnel(env, server.ips[0], listener)
        tunnels.append(fresh)
        fresh.round_trip(b"fresh\n")
        assert took < env.lab.settings.ztunnel_drain_deadline_s, (
            f"the old ztunnel waited {took:.1f} s: its drain did not end with its last tunnel")
    finally:
        for t in tunnels:
            t.close()
        listener.close()
        if successor is not None:
            procs.stop(successor, env.lab.settings.stop_grace_s, 0.05)
