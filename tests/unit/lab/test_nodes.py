"""Node daemons' command lines: ztunnel is pointed at the control plane with its credential."""

from __future__ import annotations

from pathlib import Path

from inmesh.lab.layout import LabLayout
from inmesh.lab.nodes import ztunnel_command
from inmesh.lab.settings import LabSettings


def test_ztunnel_gets_the_control_plane_and_the_node_credential() -> None:
    node = LabLayout(Path("/r")).node("n1")
    cmd = ztunnel_command(node, LabSettings(), "unix:/r/controlplane.sock", "example.org")
    args = cmd.argv[cmd.argv.index("ztunnel"):]
    tail = args[args.index("--controlplane"):]
    assert tail == (
        "--controlplane", "unix:/r/controlplane.sock",
        "--node-credentials", "/r/nodes/n1/credentials", "--trust-domain", "example.org",
    )  # fmt: skip
    assert cmd.argv[:2] == ("nsenter", "--net=/run/netns/inmesh-n1")
    assert cmd.signature == ("ztunnel", "--node", "n1", "--zds-socket", str(node.zds_socket))


def test_without_a_control_plane_ztunnel_runs_as_before() -> None:
    node = LabLayout(Path("/r")).node("n1")
    cmd = ztunnel_command(node, LabSettings())
    assert "--controlplane" not in cmd.argv
    assert "--node-credentials" not in cmd.argv
