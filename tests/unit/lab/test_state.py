"""lab.json: records round-trip, updates are functional and atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inmesh.errors import ConfigError
from inmesh.lab.state import LabState, LabStateFile, NodeRecord, PodRecord, ProcessRecord

PROC = ProcessRecord(42, 1234, ("agent", "--node", "n1"), "/r/nodes/n1/logs/agent.log")


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    f = LabStateFile(tmp_path / "lab.json")
    pod = PodRecord("u1", "web", "default", "n1", "inmesh-pod-u1", "c" * 64)
    f.update(
        lambda s: (
            LabState(backend="nftables", node_prefix="n")
            .with_node(NodeRecord("n1", 1).with_process("agent", PROC))
            .with_pod(pod.with_process("echo", PROC))
        )
    )
    loaded = LabStateFile(f.path).load()
    assert loaded.backend == "nftables"
    assert loaded.node_prefix == "n"
    assert loaded.nodes["n1"].processes["agent"] == PROC
    assert loaded.pods["u1"].processes["echo"] == PROC
    assert loaded.pods["u1"].container_id == "c" * 64


def test_missing_file_is_an_empty_lab(tmp_path: Path) -> None:
    f = LabStateFile(tmp_path / "lab.json")
    assert not f.exists()
    assert f.load() == LabState()


def test_records_are_replaced_not_mutated() -> None:
    node = NodeRecord("n1", 1)
    with_agent = node.with_process("agent", PROC)
    assert node.processes == {}
    assert with_agent.with_process("agent", None).processes == {}
    state = LabState().with_pod(PodRecord("u1", "a", "ns", "n1", "x", "c"))
    assert state.without_pod("u1").pods == {}
    assert "u1" in state.pods


@pytest.mark.parametrize("text", ["{nope", "[]", '{"nodes": {"n1": {}}}'])
def test_corrupt_state_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "lab.json"
    path.write_text(text)
    with pytest.raises(ConfigError):
        LabStateFile(path).load()


def test_cluster_level_processes_and_the_control_plane_round_trip(tmp_path: Path) -> None:
    f = LabStateFile(tmp_path / "lab.json")
    f.update(
        lambda s: LabState(controlplane_socket="/r/controlplane.sock", trust_domain="example.org")
        .with_process("controlplane", PROC)
    )
    loaded = f.load()
    assert loaded.processes == {"controlplane": PROC}
    assert loaded.controlplane_target == "unix:/r/controlplane.sock"
    assert loaded.trust_domain == "example.org"
    assert loaded.with_process("controlplane", None).processes == {}
    assert LabState().controlplane_target == ""


def test_a_plaintext_lab_round_trips_and_older_files_are_mtls(tmp_path: Path) -> None:
    f = LabStateFile(tmp_path / "lab.json")
    f.update(lambda s: LabState(mtls=False))
    assert f.load().mtls is False
    (tmp_path / "lab.json").write_text('{"version": 2}')  # written before the flag existed
    assert f.load().mtls is True
    (tmp_path / "lab.json").write_text('{"version": 2, "mtls": "no"}')
    with pytest.raises(ConfigError, match="mtls"):
        f.load()


def test_a_version_1_file_loads_as_a_lab_without_a_control_plane(tmp_path: Path) -> None:
    """lab.json written before the control plane existed: `down` must still find its pids."""
    path = tmp_path / "lab.json"
    path.write_text(json.dumps({
        "version": 1, "backend": "iptables", "nodePrefix": "n",
        "nodes": {"n1": {"index": 1, "processes": {"agent": PROC.to_json()}}}, "pods": {},
    }))  # fmt: skip
    state = LabStateFile(path).load()
    assert state.nodes["n1"].processes["agent"] == PROC
    assert state.processes == {}
    assert state.controlplane_socket == ""
    assert state.trust_domain == "cluster.local"


@pytest.mark.parametrize(
    ("version", "why"), [(3, "newer inmesh"), (99, "newer inmesh"), ("2", "not an integer")]
)
def test_a_file_from_a_newer_inmesh_is_refused_clearly(
    tmp_path: Path, version: object, why: str
) -> None:
    path = tmp_path / "lab.json"
    path.write_text(json.dumps({"version": version, "nodes": {}}))
    with pytest.raises(ConfigError, match=why):
        LabStateFile(path).load()
