"""The demo refuses to touch an existing lab: it builds its own and tears it down."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from inmesh.errors import ConfigError
from inmesh.lab.demo import FAR, PODS, run_demo


def test_demo_refuses_an_existing_lab_root(tmp_path: Path) -> None:
    (tmp_path / "lab.json").write_text("{}")
    console = Console(file=io.StringIO())
    with pytest.raises(ConfigError, match="already exists"):
        run_demo(str(tmp_path), console=console)
    assert (tmp_path / "lab.json").exists()


def test_demo_cast_covers_the_four_combinations() -> None:
    clients = {(p.mesh, p.namespace) for p in PODS if not p.server}
    servers = {p.mesh for p in PODS if p.server}
    assert {mesh for mesh, _ in clients} == {True, False}
    assert servers == {True, False}
    mesh_server = next(p for p in PODS if p.server and p.mesh)
    assert mesh_server.labels == {}  # enrolled through its namespace's label, not its own


def test_the_far_server_is_a_mesh_pod_on_the_second_node() -> None:
    assert FAR.node == 2
    assert FAR.mesh
    assert FAR.server
    assert all(p.node == 1 for p in PODS)
