"""The link between lab nodes: an isolated segment that only node namespaces are attached to.

A lab with several nodes gets one more netns, the fabric, holding a bridge ``fab0``. Each node
joins it through a veth (``eth1`` in the node, address 10.243.0.<index>/24) and routes every
other node's pod CIDR through that node's fabric address. Nothing is attached to the root
namespace: traffic between nodes stays inside namespaces the lab made, and a capture on ``fab0``
sees everything that crosses between nodes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from inmesh.lab import _cmd, namespaces
from inmesh.lab.cniconf import NodeNetwork
from inmesh.lab.layout import netns_path, node_netns_name

FABRIC_BRIDGE = "fab0"
NODE_IFNAME = "eth1"
FABRIC_CIDR = ipaddress.IPv4Network("10.243.0.0/24")


def fabric_netns_name(node_prefix: str) -> str:
    return f"inmesh-{node_prefix}fab"


def node_address(index: int) -> ipaddress.IPv4Address:
    return FABRIC_CIDR.network_address + index


def routes_for(index: int, all_indexes: Iterable[int]) -> list[tuple[str, str]]:
    """(destination CIDR, via) for every other node's pods, seen from node ``index``."""
    return [
        (str(NodeNetwork(other).pod_cidr), str(node_address(other)))
        for other in sorted(all_indexes)
        if other != index
    ]


def _link_exists(netns: str, ifname: str) -> bool:
    lines = _cmd.run(["ip", "-n", netns, "-o", "link", "show"]).splitlines()
    names = {line.split(":", 2)[1].strip().split("@")[0] for line in lines if ":" in line}
    return ifname in names


def ensure(node_prefix: str, nodes: dict[str, int]) -> str:
    """Create (or complete) the fabric for ``nodes`` (name -> index); returns its netns name."""
    fabric = fabric_netns_name(node_prefix)
    namespaces.ensure(fabric)
    if not _link_exists(fabric, FABRIC_BRIDGE):
        _cmd.run(["ip", "-n", fabric, "link", "add", FABRIC_BRIDGE, "type", "bridge"])
    _cmd.run(["ip", "-n", fabric, "link", "set", FABRIC_BRIDGE, "up"])
    for name, index in nodes.items():
        _join(fabric, name, index)
    for name, index in nodes.items():
        for dst, via in routes_for(index, nodes.values()):
            _cmd.run(["ip", "-n", node_netns_name(name), "route", "replace", dst, "via", via])
    return fabric


def _join(fabric: str, node: str, index: int) -> None:
    node_ns = node_netns_name(node)
    peer = f"n{index}"
    if not _link_exists(node_ns, NODE_IFNAME):
        _cmd.run(["ip", "link", "add", NODE_IFNAME, "netns", node_ns, "type", "veth",
                  "peer", "name", peer, "netns", fabric])
        _cmd.run(["ip", "-n", fabric, "link", "set", peer, "master", FABRIC_BRIDGE, "up"])
        _cmd.run(["ip", "-n", node_ns, "addr", "add",
                  f"{node_address(index)}/{FABRIC_CIDR.prefixlen}", "dev", NODE_IFNAME])
    _cmd.run(["ip", "-n", node_ns, "link", "set", NODE_IFNAME, "up"])
    _cmd.run(["nsenter", f"--net={netns_path(node_ns)}", "--",
              "sysctl", "-qw", "net.ipv4.ip_forward=1"])


def teardown(node_prefix: str) -> bool:
    """Remove the fabric (its veths go with it). True if there was one."""
    return namespaces.delete(fabric_netns_name(node_prefix))
