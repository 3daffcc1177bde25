"""Fabric addressing: each node routes every other node's pod CIDR via that node."""

from __future__ import annotations

from inmesh.lab.fabric import fabric_netns_name, node_address, routes_for


def test_routes_cover_every_other_node() -> None:
    assert routes_for(1, [1, 2, 3]) == [("10.244.2.0/24", "10.243.0.2"), ("10.244.3.0/24", "10.243.0.3")]
    assert routes_for(2, [1, 2]) == [("10.244.1.0/24", "10.243.0.1")]
    assert routes_for(1, [1]) == []


def test_names_and_addresses() -> None:
    assert fabric_netns_name("node") == "inmesh-nodefab"
    assert str(node_address(7)) == "10.243.0.7"
