"""`Lab.up` planning: a new lab records its control plane socket and trust domain; an existing
one keeps them (and gains a control plane if it was made before there was one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inmesh.errors import ConfigError
from inmesh.lab.lab import Lab
from inmesh.lab.state import LabState, NodeRecord


def test_a_new_lab_records_its_control_plane(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    s = lab._plan(LabState(), ["n1", "n2"], "auto", "n", "example.org", True)
    assert s.mtls
    assert s.controlplane_socket == str(tmp_path / "lab" / "controlplane.sock")
    assert s.trust_domain == "example.org"
    assert sorted(s.nodes) == ["n1", "n2"]


def test_an_existing_lab_keeps_its_trust_domain_and_gains_a_socket(tmp_path: Path) -> None:
    messages: list[str] = []
    lab = Lab(tmp_path / "lab", report=messages.append)
    old = LabState(node_prefix="n").with_node(NodeRecord("n1", 1))  # as read from version 1
    s = lab._plan(old, ["n1"], "auto", "n", "example.org", True)
    assert s.trust_domain == "cluster.local"
    assert s.controlplane_socket == str(tmp_path / "lab" / "controlplane.sock")
    assert any("keeps trust domain cluster.local" in m for m in messages)


def test_a_plaintext_lab_has_no_control_plane_and_stays_plaintext(tmp_path: Path) -> None:
    messages: list[str] = []
    lab = Lab(tmp_path / "lab", report=messages.append)
    s = lab._plan(LabState(), ["n1"], "auto", "n", "cluster.local", False)
    assert not s.mtls
    assert s.controlplane_socket == ""
    assert s.controlplane_target == ""  # its ztunnels run without --controlplane
    again = lab._plan(s, ["n1"], "auto", "n", "cluster.local", True)  # a later plain `up`
    assert not again.mtls
    assert again.controlplane_socket == ""
    assert any("keeps plaintext" in m for m in messages)


def test_a_malformed_trust_domain_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    with pytest.raises(ConfigError, match="trust domain"):
        lab.up(trust_domain="Not A Domain")
    assert not (tmp_path / "lab").exists()
