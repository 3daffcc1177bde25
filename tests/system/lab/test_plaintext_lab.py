"""`inmesh lab up --no-mtls`: a lab without a control plane, where two mesh pods are redirected
through ztunnel in plaintext (what bench/inpod.py measures), and which stays plaintext."""

from __future__ import annotations

import socket

from inmesh.lab._poll import poll_until
from inmesh.lab.evidence import metric_samples
from inmesh.lab.layout import netns_path
from inmesh.lab.observe import ztunnel_metrics
from inmesh.lab.pods import PodSpec
from inmesh.netns import run_in_netns
from tests.system.lab.conftest import LabEnv, send_and_read

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
OPENED = "istio_tcp_connections_opened_total"


def _opened(env: LabEnv) -> dict[tuple[str, str], float]:
    """Connections ztunnel opened, by (reporter, connection_security_policy)."""
    text = ztunnel_metrics(env.lab.layout, env.node, env.lab.settings)
    out: dict[tuple[str, str], float] = {}
    for s in metric_samples(text, OPENED):
        key = (s.labels.get("reporter", ""), s.labels.get("connection_security_policy", ""))
        out[key] = out.get(key, 0.0) + s.value
    return out


def test_a_plaintext_lab_redirects_mesh_pods_without_mtls(lab_env: LabEnv) -> None:
    env = lab_env
    up = env.cli("up", "--node-prefix", env.prefix, "--no-mtls")
    assert "plaintext (no control plane)" in up.stdout
    state = env.lab.state.load()
    assert not state.mtls
    assert state.controlplane_socket == ""
    assert "controlplane" not in state.processes

    client = env.lab.add_pod(PodSpec("client", labels=AMBIENT))
    server = env.lab.add_pod(PodSpec("server", labels=AMBIENT))
    assert poll_until(
        lambda: all(p.enrollment == "enrolled" and p.proxy == "Up"
                    for p in env.lab.status().pods), 30.0, 0.2), env.lab.status().to_json()

    s_rec = env.lab.pods.find("default", "server")
    listener = run_in_netns(netns_path(s_rec.netns), socket.socket)
    with listener:
        listener.bind((server.ips[0], 8080))
        listener.listen(1)
        listener.settimeout(10)
        peer, got = send_and_read(env.lab.pods.find("default", "client"), server.ips[0],
                                  listener, b"plain\n")
    assert (peer, got) == (client.ips[0], b"plain\n")

    # Both hops went through ztunnel, in plaintext: no mutual_tls connection at all.
    opened = _opened(env)
    assert opened.get(("source", "unknown"), 0) >= 1
    assert opened.get(("destination", "unknown"), 0) >= 1
    assert not any(policy == "mutual_tls" for _, policy in opened)

    again = env.cli("up", "--node-prefix", env.prefix)  # a later plain `up` keeps it plaintext
    assert "plaintext (no control plane)" in again.stdout
    assert "controlplane" not in env.lab.state.load().processes
