"""ztunnel's inbound worker (`inmesh.ztunnel.offload`) in a real lab: it serves the pods' 15008,
its connections are counted in ztunnel's metrics, and when it dies ztunnel serves 15008 itself
until a new worker is up, so mesh traffic between two pods of one node never stops working;
then the connections ztunnel accepted meanwhile are handed back (GOAWAY)."""

from __future__ import annotations

import os
import select
import signal
import socket

from inmesh.constants import LABEL_DATAPLANE_MODE
from inmesh.errors import InmeshError
from inmesh.lab._poll import poll_until
from inmesh.lab.layout import netns_path
from inmesh.lab.meshview import tunnel_of
from inmesh.lab.observe import ztunnel_config_dump, ztunnel_metrics
from inmesh.lab.pods import PodSpec
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import LabEnv, pids_on_15008, worker_pids

AMBIENT = {LABEL_DATAPLANE_MODE: "ambient"}
APP_PORT = 8080
IO_TIMEOUT_S = 10.0
ACCEPT_TIMEOUT_S = 2.0
"""An attempt whose tunnel died with the worker never reaches the server: give up on it soon
and try again."""
RECOVERY_TIMEOUT_S = 20.0
MESH_READY_TIMEOUT_S = 30.0


def _inbound_opened(env: LabEnv) -> float:
    text = ztunnel_metrics(env.lab.layout, env.node, env.lab.settings)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("istio_tcp_connections_opened_total{")
               and 'reporter="destination"' in line and "mutual_tls" in line)


def _mesh_ready(env: LabEnv) -> bool:
    pods = {p.name: p for p in env.lab.status().pods}
    if not all(pods[n].enrollment == "enrolled" and pods[n].proxy == "Up"
               for n in ("client", "server")):
        return False
    try:
        dump = ztunnel_config_dump(env.lab.layout, env.node, env.lab.settings)
    except InmeshError:
        return False
    return tunnel_of("default", "server", dump) == "HBONE"


def _round_trip(env: LabEnv, server_ip: str, listener: socket.socket, hold: bool = False
                ) -> tuple[socket.socket, socket.socket] | None:
    """client -> server and back through the mesh; with ``hold`` the two sockets stay open
    (returned) so the tunnel can be looked at."""
    client_rec = env.lab.pods.find("default", "client")
    sock = run_in_netns(netns_path(client_rec.netns), socket.socket)
    conn: socket.socket | None = None
    try:
        sock.settimeout(IO_TIMEOUT_S)
        sock.connect((server_ip, APP_PORT))
        sock.sendall(b"ping\n")
        conn, _ = listener.accept()
        conn.settimeout(IO_TIMEOUT_S)
        assert conn.recv(16) == b"ping\n"
        conn.sendall(b"pong\n")
        assert sock.recv(16) == b"pong\n"
    except BaseException:
        sock.close()
        if conn is not None:
            conn.close()
        raise
    if hold:
        return sock, conn
    sock.close()
    conn.close()
    return None


def _log(env: LabEnv) -> str:
    path = env.root / "nodes" / env.node / "logs" / "ztunnel.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-40:])


def _held(env: LabEnv, server_ip: str, listener: socket.socket
          ) -> tuple[socket.socket, socket.socket] | None:
    """A tunnel held open, or None at once if the proxy reset the attempt (a tunnel lost with
    the worker): the client side is watched while waiting for the server's accept."""
    client_rec = env.lab.pods.find("default", "client")
    sock = run_in_netns(netns_path(client_rec.netns), socket.socket)
    try:
        sock.settimeout(IO_TIMEOUT_S)
        sock.connect((server_ip, APP_PORT))
        sock.sendall(b"ping\n")
        ready, _, _ = select.select([listener, sock], [], [], ACCEPT_TIMEOUT_S)
        if listener not in ready:
            sock.close()
            return None  # reset (or nothing) on the client side
        conn, _ = listener.accept()
    except OSError:
        sock.close()
        return None
    conn.settimeout(IO_TIMEOUT_S)
    held = (sock, conn)
    try:
        assert conn.recv(16) == b"ping\n"
        conn.sendall(b"pong\n")
        assert sock.recv(16) == b"pong\n"
    except BaseException:
        for s in held:
            s.close()
        raise
    return held


def _check_echo(held: tuple[socket.socket, socket.socket]) -> None:
    sock, conn = held
    sock.sendall(b"still\n")
    assert conn.recv(16) == b"still\n"
    conn.sendall(b"here\n")
    assert sock.recv(16) == b"here\n"


def test_worker_serves_15008_and_a_dead_worker_is_replaced_without_an_outage(
        lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(nodes=1, node_prefix=env.prefix)
    env.lab.add_pod(PodSpec("client", labels=AMBIENT, node=env.node))
    server = env.lab.add_pod(PodSpec("server", labels=AMBIENT, node=env.node))
    assert poll_until(lambda: _mesh_ready(env), MESH_READY_TIMEOUT_S, 0.2), (
        f"mesh not ready: {env.lab.status().to_json()}")
    zt = env.lab.state.load().nodes[env.node].processes["ztunnel"].pid
    assert poll_until(lambda: len(worker_pids(zt)) == 1, 10.0, 0.1), "no inbound worker"
    [worker] = worker_pids(zt)
    server_netns = netns_path(env.lab.pods.find("default", "server").netns)
    # Handed over: the worker holds a duplicate of the pod's 15008 listener (ztunnel keeps its
    # own, for when no worker is there).
    assert poll_until(lambda: pids_on_15008(server_netns, "listening") == {zt, worker}, 10.0,
                      0.1), pids_on_15008(server_netns, "listening")

    listener = run_in_netns(server_netns, socket.socket)
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", APP_PORT))
        listener.listen(16)
        listener.settimeout(ACCEPT_TIMEOUT_S)

        # The worker holds the tunnel's server end; ztunnel counts it.
        opened = _inbound_opened(env)
        held = _round_trip(env, server.ips[0], listener, hold=True)
        assert held is not None
        try:
            assert pids_on_15008(server_netns, "established") == {worker}
            assert poll_until(lambda: _inbound_opened(env) == opened + 1, 5.0, 0.05)
        finally:
            for s in held:
                s.close()

        # A dead worker: ztunnel serves 15008 itself (a tunnel opened now is ztunnel's; the
        # successor comes after a 1 s restart delay), then a new worker takes over, and
        # ztunnel hands the pooled connection it accepted back (GOAWAY): its tunnel finishes
        # there, the next one dials again and lands on the successor.
        os.kill(worker, signal.SIGKILL)
        during = poll_until(lambda: _held(env, server.ips[0], listener), RECOVERY_TIMEOUT_S,
                            0.05)
        assert during is not None, (
            "mesh traffic did not recover after the worker died:\n" + _log(env))
        try:
            assert pids_on_15008(server_netns, "established") == {zt}
            assert poll_until(lambda: worker_pids(zt) not in ([], [worker]), 15.0, 0.1), (
                "no new worker was started")
            [successor] = worker_pids(zt)
            assert poll_until(
                lambda: pids_on_15008(server_netns, "listening") == {zt, successor}, 10.0,
                0.1), pids_on_15008(server_netns, "listening")
            after = _round_trip(env, server.ips[0], listener, hold=True)
            assert after is not None
            try:
                assert pids_on_15008(server_netns, "established") == {zt, successor}
            finally:
                for s in after:
                    s.close()
            _check_echo(during)  # the tunnel ztunnel kept still works
        finally:
            for s in during:
                s.close()
        assert poll_until(lambda: pids_on_15008(server_netns, "established") == {successor},
                          5.0, 0.1), pids_on_15008(server_netns, "established")
