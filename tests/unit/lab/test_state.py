"""lab.json: records round-trip, updates are functional and atomic."""

from __future__ import annotations

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
