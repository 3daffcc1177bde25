"""The lab's control plane on real namespaces: started by `up` before the ztunnels, in its own
netns, its keys and the node credentials private and kept, restarted by `up` when it died,
visible in `status`, and gone after `down`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

from inmesh.lab import namespaces, procs
from inmesh.lab._poll import poll_until
from inmesh.lab.controlplane import ROLE
from inmesh.lab.lab import Lab
from inmesh.lab.layout import (
    MAX_UNIX_SOCKET_PATH,
    SHORT_SOCKET_DIR,
    controlplane_netns_name,
    netns_path,
)
from inmesh.lab.procs import ProcState
from inmesh.lab.state import LabState
from inmesh.pki import NodeCredential
from tests.system.lab.conftest import (
    TEST_SETTINGS,
    LabEnv,
    _force_cleanup,
    processes_mentioning,
)

XDS_SYNC_TIMEOUT_S = 20.0
"""A ztunnel reconnects to a restarted control plane with back-off; seconds, not minutes."""


def _mode(path: object) -> str:
    return oct(os.stat(str(path)).st_mode & 0o777)


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def _status(env: LabEnv) -> dict[str, object]:
    doc = json.loads(env.cli("status", "--json").stdout)
    assert isinstance(doc, dict)
    return doc


def _xds_synced(env: LabEnv) -> bool:
    return all(n.xds == "synced" for n in env.lab.status().nodes)


def test_up_runs_the_control_plane_first_and_down_removes_it(lab_env: LabEnv) -> None:
    env = lab_env
    env.up()
    state = env.lab.state.load()
    cp = state.processes[ROLE]
    assert procs.is_running(cp)
    cp_netns = controlplane_netns_name(env.prefix)
    assert os.stat(f"/proc/{cp.pid}/ns/net").st_ino == os.stat(netns_path(cp_netns)).st_ino
    ztunnel = state.nodes[env.node].processes["ztunnel"]
    assert cp.start_ticks <= ztunnel.start_ticks  # the control plane came first
    args = _cmdline(ztunnel.pid)
    creds = env.lab.layout.node(env.node).credentials_dir
    assert args[args.index("--controlplane") + 1] == state.controlplane_target
    assert args[args.index("--node-credentials") + 1] == str(creds)

    cp_dir = env.lab.layout.controlplane_dir
    assert _mode(cp_dir / "root-key.pem") == _mode(cp_dir / "node-ca-key.pem") == "0o600"
    assert _mode(creds / "node-key.pem") == "0o600"
    assert NodeCredential.load(creds).node_identity() == ("cluster.local", env.node)
    assert os.path.exists(state.controlplane_socket)

    doc = _status(env)
    assert doc["controlplane"] == {
        "pid": cp.pid, "running": True, "ready": True, "listen": state.controlplane_target,
        "netns": cp_netns, "trustDomain": "cluster.local", "errors": [],
    }  # fmt: skip
    assert poll_until(lambda: _xds_synced(env), XDS_SYNC_TIMEOUT_S, 0.1)
    assert "control plane: ready" in env.cli("status").stdout

    env.cli("down")
    assert not namespaces.exists(cp_netns)
    assert not os.path.exists(state.controlplane_socket)
    assert processes_mentioning(str(env.root)) == []
    assert not env.root.exists()


def test_up_restarts_a_dead_control_plane_with_the_same_keys(lab_env: LabEnv) -> None:
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    state = env.lab.state.load()
    cp, ztunnel = state.processes[ROLE], state.nodes[env.node].processes["ztunnel"]
    root_cert = (env.lab.layout.controlplane_dir / "root-cert.pem").read_bytes()
    node_cert = (env.lab.layout.node(env.node).credentials_dir / "node-cert.pem").read_bytes()

    os.kill(cp.pid, signal.SIGKILL)  # the control plane this test's lab started
    assert poll_until(lambda: procs.state_of(cp) is ProcState.EXITED, 5, 0.05)
    status = env.lab.status()
    assert status.controlplane is not None
    assert status.controlplane.process.state == "down"

    env.messages.clear()
    env.lab.up(node_prefix=env.prefix)
    assert any(m.startswith("restarted control plane") for m in env.messages)
    assert not any("issued node credential" in m for m in env.messages)
    now = env.lab.state.load()
    assert now.processes[ROLE].pid != cp.pid
    assert now.nodes[env.node].processes["ztunnel"] == ztunnel  # kept: it reconnects by itself
    assert (env.lab.layout.controlplane_dir / "root-cert.pem").read_bytes() == root_cert
    creds = env.lab.layout.node(env.node).credentials_dir
    assert (creds / "node-cert.pem").read_bytes() == node_cert
    assert poll_until(lambda: _xds_synced(env), XDS_SYNC_TIMEOUT_S, 0.1)


def test_a_lab_from_before_the_control_plane_gains_one(lab_env: LabEnv) -> None:
    """lab.json version 1 (no control plane; ztunnel without one): `up` adds the control plane
    and restarts ztunnel pointed at it."""
    env = lab_env
    env.lab.up(node_prefix=env.prefix)
    env.lab.controlplane.stop()
    env.lab.state.update(lambda s: replace(s, controlplane_socket=""))
    doc = json.loads(env.lab.layout.state.read_text())
    for key in ("processes", "controlplaneSocket", "trustDomain"):
        del doc[key]
    doc["version"] = 1
    env.lab.layout.state.write_text(json.dumps(doc))
    old_ztunnel = env.lab.state.load().nodes[env.node].processes["ztunnel"]
    assert env.lab.status().controlplane is None

    env.lab.up(node_prefix=env.prefix)
    state = env.lab.state.load()
    assert procs.is_running(state.processes[ROLE])
    ztunnel = state.nodes[env.node].processes["ztunnel"]
    assert ztunnel.pid != old_ztunnel.pid
    assert "--controlplane" in _cmdline(ztunnel.pid)
    assert not procs.is_running(old_ztunnel)
    assert json.loads(env.lab.layout.state.read_text())["version"] == 2
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert controlplane_netns_name(env.prefix) in out.stdout


def test_a_deep_root_gets_short_sockets_that_down_removes(tmp_path: Path) -> None:
    """Sockets whose path would pass 107 bytes move to a short dir named after the root."""
    prefix = f"lt{secrets.token_hex(3)}n"
    root = tmp_path / ("deep-" * 20) / "lab"
    lab = Lab(root, TEST_SETTINGS)
    try:
        state = lab.up(node_prefix=prefix)
        assert len(str(root / "controlplane.sock")) > MAX_UNIX_SOCKET_PATH
        short = lab.layout.short_dir
        assert short.parent == Path(SHORT_SOCKET_DIR)
        assert Path(state.controlplane_socket) == short / "controlplane.sock"
        node = lab.layout.node(f"{prefix}1")
        assert node.zds_socket.is_relative_to(short)
        assert node.plugin_socket.exists()
        status = lab.status()
        assert status.controlplane is not None
        assert status.controlplane.process.ready
        assert status.nodes[0].agent.ready
        assert status.nodes[0].ztunnel.ready
        lab.down()
        assert not short.exists()
        assert not root.exists()
    finally:
        leftover = lab.state.load() if lab.state.exists() else LabState()
        lab.down()
        _force_cleanup(leftover, prefix)
