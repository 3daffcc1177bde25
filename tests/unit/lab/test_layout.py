"""Lab layout: file locations and namespace names derive from names only."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import ConfigError
from inmesh.lab.layout import (
    MAX_UNIX_SOCKET_PATH,
    POD_NETNS_PREFIX,
    SHORT_SOCKET_DIR,
    LabLayout,
    check_node_name,
    controlplane_netns_name,
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


def test_control_plane_files_live_under_the_root() -> None:
    lab = LabLayout(Path("/r"))
    assert lab.controlplane_dir == Path("/r/controlplane")
    assert lab.controlplane_socket == Path("/r/controlplane.sock")
    assert lab.log_file("controlplane") == Path("/r/logs/controlplane.log")
    assert lab.node("n1").credentials_dir == Path("/r/nodes/n1/credentials")
    assert controlplane_netns_name("lt1n") == "inmesh-lt1ncp"


@given(st.text(alphabet="abcdefghij/-_.", min_size=1, max_size=300),
       st.from_regex(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", fullmatch=True))  # fmt: skip
def test_every_socket_fits_a_unix_address_whatever_the_root(tail: str, node_name: str) -> None:
    lab = LabLayout(Path("/tmp") / tail)
    node = lab.node(node_name)
    for path in (lab.controlplane_socket, node.plugin_socket, node.zds_socket):
        assert len(str(path).encode()) <= MAX_UNIX_SOCKET_PATH
        inside = path.is_relative_to(lab.root)
        assert inside or path.is_relative_to(lab.short_dir)
    assert {node.agent_run_dir, node.zds_socket.parent} <= set(node.subdirs())


def test_sockets_stay_under_a_root_where_they_fit() -> None:
    lab = LabLayout(Path("/tmp/pytest-of-root/pytest-1/test_x0/lab"))
    assert lab.controlplane_socket == lab.root / "controlplane.sock"
    node = lab.node("n1")
    assert node.agent_run_dir == lab.root / "nodes/n1/agent"
    assert node.zds_socket == lab.root / "nodes/n1/zds/ztunnel.sock"


def test_deep_roots_get_distinct_short_socket_dirs() -> None:
    a = LabLayout(Path("/tmp/" + "a" * 100))
    b = LabLayout(Path("/tmp/" + "b" * 100))
    assert a.controlplane_socket == a.short_dir / "controlplane.sock"
    assert a.short_dir != b.short_dir
    assert a.short_dir.parent == b.short_dir.parent == Path(SHORT_SOCKET_DIR)
    assert a.node("n1").zds_socket == a.short_dir / "n1/zds/ztunnel.sock"
    assert a.node("n1").agent_run_dir == a.short_dir / "n1/agent"
    assert a.node("n1").conf_dir.is_relative_to(a.root)  # only sockets move
