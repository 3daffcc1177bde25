"""The lab's control plane: its command line, the credential it is probed with, its teardown."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

from inmesh.lab.controlplane import (
    ControlPlaneManager,
    controlplane_command,
    controlplane_ready,
    probe_credentials,
)
from inmesh.lab.credentials import CredentialIssuer
from inmesh.lab.layout import LabLayout
from inmesh.lab.settings import LabSettings
from inmesh.lab.state import LabState, LabStateFile, NodeRecord


def _state(root: Path) -> LabState:
    return (
        LabState(node_prefix="n", controlplane_socket=f"{root}/controlplane.sock",
                 trust_domain="example.org")
        .with_node(NodeRecord("n2", 2))
        .with_node(NodeRecord("n1", 1))
    )  # fmt: skip


def test_command_runs_serve_in_its_own_netns_on_the_unix_socket() -> None:
    lab = LabLayout(Path("/r"))
    cmd = controlplane_command(lab, _state(Path("/r")))
    assert cmd.argv[:2] == ("nsenter", "--net=/run/netns/inmesh-ncp")
    args = cmd.argv[cmd.argv.index("controlplane"):]
    assert args == (
        "controlplane", "serve", "--state-dir", "/r/controlplane", "--store", "/r/cluster.json",
        "--listen", "unix:/r/controlplane.sock", "--trust-domain", "example.org",
    )  # fmt: skip
    assert cmd.signature == ("controlplane", "serve", "--state-dir", "/r/controlplane")


def test_the_probe_uses_the_first_nodes_credential() -> None:
    lab = LabLayout(Path("/r"))
    assert probe_credentials(lab, _state(Path("/r"))) == Path("/r/nodes/n1/credentials")
    assert not probe_credentials(lab, LabState()).is_relative_to("/r/nodes")


def test_not_ready_without_a_socket_or_a_credential(tmp_path: Path) -> None:
    assert not controlplane_ready(str(tmp_path / "none.sock"), tmp_path, 0.1)
    path = tmp_path / "cp.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        assert not controlplane_ready(str(path), tmp_path / "no-credential", 0.1)


def test_a_listener_that_does_not_speak_mutual_tls_is_not_ready(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    CredentialIssuer(tmp_path / "cp", tmp_path / "cluster.json", "cluster.local").ensure(
        {"n1": creds}, datetime.now(UTC)
    )
    path = tmp_path / "cp.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()  # accepts in the kernel, never answers the TLS handshake
        assert not controlplane_ready(str(path), creds, 0.3)


def test_teardown_removes_the_socket_and_stop_tolerates_no_process(tmp_path: Path) -> None:
    lab = LabLayout(tmp_path)
    state_file = LabStateFile(lab.state)
    state = state_file.update(lambda _: _state(tmp_path))
    Path(state.controlplane_socket).write_text("")
    messages: list[str] = []
    manager = ControlPlaneManager(lab, state_file, LabSettings(), messages.append)
    manager.stop()
    assert manager.teardown(state) == []  # its netns never existed: nothing to complain about
    assert not Path(state.controlplane_socket).exists()
    assert messages == []
