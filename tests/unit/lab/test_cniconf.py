"""The node's primary CNI config and reading IPs out of CNI results."""

from __future__ import annotations

import pytest

from inmesh.errors import ConfigError
from inmesh.lab.cniconf import NodeNetwork, primary_conflist, primary_is_current, result_ips


def test_node_i_gets_its_own_24_with_gateway_dot_1() -> None:
    net = NodeNetwork(3)
    assert str(net.pod_cidr) == "10.244.3.0/24"
    assert str(net.gateway) == "10.244.3.1"


@pytest.mark.parametrize("index", [0, 255, -1])
def test_node_index_out_of_range(index: int) -> None:
    with pytest.raises(ConfigError):
        NodeNetwork(index)


def test_conflist_is_a_bridge_gateway_without_masquerade() -> None:
    conf = primary_conflist(NodeNetwork(2), "/lab/nodes/n2/ipam")
    assert conf["cniVersion"] == "1.0.0"
    (bridge,) = conf["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == "cni0"
    assert bridge["isGateway"] is True
    assert bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local"
    assert ipam["dataDir"] == "/lab/nodes/n2/ipam"
    assert ipam["ranges"] == [[{"subnet": "10.244.2.0/24", "gateway": "10.244.2.1"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}]


def test_current_config_ignores_the_chained_inmesh_plugin() -> None:
    wanted = primary_conflist(NodeNetwork(1), "/ipam")
    chained = {**wanted, "plugins": [*wanted["plugins"], {"type": "inmesh-cni", "x": 1}]}
    assert primary_is_current(chained, wanted)
    assert primary_is_current(wanted, wanted)


def test_a_changed_subnet_is_not_current() -> None:
    wanted = primary_conflist(NodeNetwork(1), "/ipam")
    assert not primary_is_current(primary_conflist(NodeNetwork(2), "/ipam"), wanted)
    assert not primary_is_current({"name": "inmesh-lab"}, wanted)


def test_result_ips_strip_the_prefix_length() -> None:
    result = {"ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1"},
                      {"address": "fd00::5/64"}]}  # fmt: skip
    assert result_ips(result) == ("10.244.1.5", "fd00::5")


@pytest.mark.parametrize(
    "result",
    [{}, {"ips": "x"}, {"ips": [{"gateway": "1.2.3.4"}]}, {"ips": [{"address": "nonsense"}]}],
)
def test_malformed_results_are_config_errors(result: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        result_ips(result)
