"""Lab layout: file locations and namespace names derive from names only."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import ConfigError
from inmesh.lab.layout import (
    POD_NETNS_PREFIX,
    LabLayout,
    check_node_name,
    node_netns_name,
    pod_netns_name,
)
from inmesh.lab.settings import DEFAULT_ROOT, ROOT_ENV, default_root


def test_lab_files_live_under_the_root() -> None:
    lab = LabLayout(Path("/r"))
    assert lab.store == Path("/r/cluster.json")
    assert lab.state == Path("/r/lab.json")
    assert lab.pod_dir("u1") == Path("/r/pods/u1")


def test_node_directories_and_sockets() -> None:
    node = LabLayout(Path("/r")).node("node1")
    assert node.netns == "inmesh-node1"
    assert node.netns_path == "/run/netns/inmesh-node1"
    assert node.conf_dir == Path("/r/nodes/node1/net.d")
    assert node.primary_conflist == Path("/r/nodes/node1/net.d/10-inmesh-lab.conflist")
    assert node.plugin_socket == Path("/r/nodes/node1/agent/pluginevent.sock")
    assert node.zds_socket == Path("/r/nodes/node1/zds/ztunnel.sock")
    assert node.log_file("agent") == Path("/r/nodes/node1/logs/agent.log")
    names = {p.name for p in node.subdirs()}
    assert names == {"net.d", "bin", "agent", "zds", "state", "ipam", "cni-cache", "logs"}


@pytest.mark.parametrize("bad", ["", "Node1", "node_1", "-node", "node-", "a" * 41, "n/1", "n 1"])
def test_bad_node_names_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad node name"):
        check_node_name(bad)


def test_pod_netns_name_is_short_and_from_the_uid() -> None:
    name = pod_netns_name("0183e8f3-1b14-4a7e-9d2b-5e1f00000000")
    assert name == POD_NETNS_PREFIX + "0183e8f31b14"


@given(st.uuids())
def test_pod_netns_names_fit_in_a_file_name(uid: object) -> None:
    name = pod_netns_name(str(uid))
    assert name.startswith(POD_NETNS_PREFIX)
    assert "/" not in name
    assert len(name) < 64


def test_node_netns_name() -> None:
    assert node_netns_name("n7") == "inmesh-n7"


def test_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_ENV, "/tmp/x")
    assert default_root() == "/tmp/x"
    monkeypatch.delenv(ROOT_ENV)
    assert default_root() == DEFAULT_ROOT
