"""A mesh pod end to end: enrolled by the agent, proxied by ztunnel, visible in the kernel.

Needs a working agent (rules + ZDS) and ztunnel; these tests are the lab's acceptance check
of the whole node, not of the lab alone.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
from pathlib import Path

from inmesh.constants import OUTBOUND_PORT
from inmesh.lab import namespaces
from inmesh.lab.evidence import Endpoint, workload_total
from inmesh.lab.layout import netns_path
from inmesh.lab.pods import PodSpec
from inmesh.lab.witness import Witness
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import INMESH, LabEnv, processes_mentioning

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def test_mesh_pod_is_enrolled_and_its_traffic_goes_through_ztunnel(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    client = env.lab.add_pod(PodSpec("client", labels=AMBIENT))
    server = env.lab.add_pod(PodSpec("server"))

    status = {p.name: p for p in env.lab.status().pods}
    assert status["client"].enrollment == "enrolled"
    assert status["client"].proxy == "Up"
    assert status["server"].enrollment == "no"

    backend = env.lab.status().nodes[0].backend or "iptables"
    witness = Witness(env.lab.layout, env.lab.settings, backend)
    c_rec, s_rec = env.lab.pods.find("default", "client"), env.lab.pods.find("default", "server")
    assert witness.redirect_counters(netns_path(c_rec.netns)) is not None
    assert witness.redirect_counters(netns_path(s_rec.netns)) is None
    before = witness.opened(env.node)
    assert before is not None

    listener = run_in_netns(netns_path(s_rec.netns), socket.socket)
    with listener:
        listener.bind((server.ips[0], 8080))
        listener.listen(1)
        listener.settimeout(5)
        sock = run_in_netns(netns_path(c_rec.netns), socket.socket)
        with sock:
            sock.settimeout(5)
            sock.bind((client.ips[0], 0))
            local = Endpoint(client.ips[0], sock.getsockname()[1])
            sock.connect((server.ips[0], 8080))
            conn, peer = listener.accept()
            with conn:
                sock.sendall(b"hi")
                assert conn.recv(2) == b"hi"
                flow = witness.conntrack_flow(netns_path(c_rec.netns), local)
    assert flow is not None
    assert flow.rewritten_to is not None
    assert flow.rewritten_to.port == OUTBOUND_PORT
    after = witness.opened(env.node)
    assert after is not None
    opened = workload_total(after, "source", "client", "default") - workload_total(
        before, "source", "client", "default"
    )
    assert opened == 1
    assert peer[0] == client.ips[0]  # ztunnel keeps the client's source address


def test_demo_command_passes_and_cleans_up(tmp_path: Path) -> None:
    """`inmesh lab demo` exits 0 only if every claim matched; it leaves nothing behind."""
    root = tmp_path / "demo"
    prefix = f"dt{secrets.token_hex(3)}n"
    try:
        proc = subprocess.run(
            [INMESH, "lab", "demo", "--root", str(root), "--node-prefix", prefix],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        for name in namespaces.list_names(f"inmesh-{prefix}"):
            namespaces.delete(name)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "every claim above matched" in text
    assert "refused" in text
    assert "127.0.0.1:15001 (REDIRECT)" in text
    assert "+1 mTLS" in text  # mesh to mesh over HBONE
    assert "marker absent" in text  # across nodes: the fabric never sees the mesh app's bytes
    assert "marker in clear" in text  # ...but does see the plain pod's
    assert not root.exists()
    assert namespaces.list_names(f"inmesh-{prefix}") == []
    assert processes_mentioning(str(root)) == []  # agent, ztunnel and echo servers all gone
