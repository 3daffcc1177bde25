"""Issue 3, section 3: mesh pods on two nodes talk over HBONE, and a capture on the link
between the nodes shows TLS to port 15008 and never the application's bytes, while a plain
pod's bytes on the same link are there to see (so the capture does see application data)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from inmesh.constants import LABEL_DATAPLANE_MODE
from inmesh.errors import InmeshError
from inmesh.lab._poll import poll_until
from inmesh.lab.capture import Capture
from inmesh.lab.fabric import FABRIC_BRIDGE, fabric_netns_name
from inmesh.lab.layout import netns_path
from inmesh.lab.meshview import tunnel_of
from inmesh.lab.observe import ztunnel_config_dump
from inmesh.lab.pcap import TLS_HANDSHAKE, tcp_packets, wire_evidence
from inmesh.lab.pods import PodSpec
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import LabEnv, send_and_read

AMBIENT = {LABEL_DATAPLANE_MODE: "ambient"}
HBONE_PORT = 15008
APP_PORT = 8080
IO_TIMEOUT_S = 10.0
"""One connect or read across two proxies; they answer in milliseconds when they work."""
MESH_READY_TIMEOUT_S = 30.0
"""Enrollment, the agents' redirection report, discovery to the other node, certificates."""


def _server_is_hbone_on(env: LabEnv, node: str) -> bool:
    """The client node's ztunnel has the server as an HBONE workload (from the control plane)."""
    try:
        dump = ztunnel_config_dump(env.lab.layout, node, env.lab.settings)
    except InmeshError:
        return False
    return tunnel_of("default", "server", dump) == "HBONE"


def _mesh_ready(env: LabEnv, node1: str) -> bool:
    pods = {p.name: p for p in env.lab.status().pods}
    up = all(pods[n].enrollment == "enrolled" and pods[n].proxy == "Up"
             for n in ("client", "server"))  # fmt: skip
    return up and _server_is_hbone_on(env, node1)


def test_cross_node_mesh_traffic_is_hbone_and_the_fabric_never_sees_app_bytes(
    lab_env: LabEnv, tmp_path: Path
) -> None:
    env = lab_env
    node1, node2 = f"{env.prefix}1", f"{env.prefix}2"
    env.lab.up(nodes=2, node_prefix=env.prefix)
    client = env.lab.add_pod(PodSpec("client", labels=AMBIENT, node=node1))
    server = env.lab.add_pod(PodSpec("server", labels=AMBIENT, node=node2))
    plain = env.lab.add_pod(PodSpec("plain", node=node1))
    assert poll_until(lambda: _mesh_ready(env, node1), MESH_READY_TIMEOUT_S, 0.2), (
        f"mesh not ready: {env.lab.status().to_json()}"
    )

    mesh_marker = f"mesh-secret-{secrets.token_hex(8)}".encode()
    plain_marker = f"plain-visible-{secrets.token_hex(8)}".encode()
    server_rec = env.lab.pods.find("default", "server")
    listener = run_in_netns(netns_path(server_rec.netns), socket.socket)
    fabric = netns_path(fabric_netns_name(env.prefix))
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", APP_PORT))
        listener.listen(4)
        listener.settimeout(IO_TIMEOUT_S)
        with Capture(fabric, FABRIC_BRIDGE, tmp_path / "fabric.pcap") as capture:
            mesh_peer, mesh_got = send_and_read(
                env.lab.pods.find("default", "client"), server.ips[0], listener,
                mesh_marker + b"\n",
            )  # fmt: skip
            plain_peer, plain_got = send_and_read(
                env.lab.pods.find("default", "plain"), server.ips[0], listener,
                plain_marker + b"\n",
            )  # fmt: skip
            pcap = capture.stop()

    assert mesh_got == mesh_marker + b"\n"
    assert mesh_peer == client.ips[0]  # the server sees the client pod, not a proxy
    assert plain_got == plain_marker + b"\n"
    assert plain_peer == plain.ips[0]

    packets = tcp_packets(pcap)
    to_hbone = [p for p in packets if (p.dst, p.dport) == (server.ips[0], HBONE_PORT)]
    assert to_hbone, f"no TCP to {server.ips[0]}:{HBONE_PORT} on {FABRIC_BRIDGE}"
    first = next(p.payload for p in to_hbone if p.payload)
    assert first[0] == TLS_HANDSHAKE  # what crosses to 15008 is TLS
    assert not [p for p in packets if APP_PORT in (p.sport, p.dport) and
                client.ips[0] in (p.src, p.dst)]  # fmt: skip  # mesh app port never on the wire
    assert mesh_marker not in pcap  # the application's bytes never cross in clear
    assert b"ack " + mesh_marker not in pcap
    assert plain_marker in pcap  # ...while the capture does see clear application bytes
    evidence = wire_evidence(pcap, server.ips[0], mesh_marker)
    assert evidence.tls_to == (f"{server.ips[0]}:{HBONE_PORT}",)
    assert not evidence.marker_seen

    pods = {p.name: p for p in env.lab.status().pods}  # what each node's proxy now reports
    for name in ("client", "server"):
        cert = pods[name].certificate
        assert cert.identity == "spiffe://cluster.local/ns/default/sa/default"
        assert cert.state in ("available", "renewing"), cert
        assert cert.not_after
        assert pods[name].tunnel == "HBONE"
    assert pods["plain"].certificate.identity == ""
