"""The node's primary CNI network: a bridge with host-local IPAM, one /24 per node.

Pure: builds the conflist a cluster installer would drop into /etc/cni/net.d. `inmesh cni
install` later chains the inmesh-cni plugin onto it. Node i gets 10.244.i.0/24, gateway .1 on
the node's `cni0` bridge, so that an inter-node link can later route between node subnets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from inmesh.cni.conflist import is_ours
from inmesh.errors import ConfigError

CNI_VERSION = "1.0.0"
NETWORK_NAME = "inmesh-lab"
BRIDGE_NAME = "cni0"
POD_SUPERNET = ipaddress.IPv4Network("10.244.0.0/16")
MAX_NODES = 254


@dataclass(frozen=True)
class NodeNetwork:
    """The addressing of one node: which /24 its pods get and the bridge's gateway address."""

    index: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_NODES:
            raise ConfigError(f"node index {self.index} out of range 1..{MAX_NODES}")

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.244.{self.index}.0/24")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address + 1


def primary_conflist(net: NodeNetwork, ipam_data_dir: str) -> dict[str, Any]:
    """The conflist for one node: bridge `cni0` as the pods' gateway, IPs from host-local.

    ipMasq is off: the node has no uplink, and pod IPs must stay visible to peers (the mesh
    identifies workloads by source address).
    """
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE_NAME,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net.pod_cidr), "gateway": str(net.gateway)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_data_dir,
                },
            }
        ],
    }


def result_ips(result: dict[str, Any]) -> tuple[str, ...]:
    """The pod's addresses (without prefix length) from a final CNI ADD result."""
    ips = result.get("ips")
    if not isinstance(ips, list):
        raise ConfigError(f"CNI result has no 'ips' list: {result!r}")
    out: list[str] = []
    for entry in ips:
        addr = entry.get("address") if isinstance(entry, dict) else None
        if not isinstance(addr, str):
            raise ConfigError(f"CNI result has a malformed ip entry: {entry!r}")
        try:
            out.append(str(ipaddress.ip_interface(addr).ip))
        except ValueError as exc:
            raise ConfigError(f"CNI result has a bad address {addr!r}") from exc
    return tuple(out)


def primary_is_current(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True if ``existing`` has ``wanted``'s name and plugins, plus at most the chained plugin."""
    plugins = existing.get("plugins")
    if not isinstance(plugins, list):
        return False
    base = [p for p in plugins if not (isinstance(p, dict) and is_ours(p))]
    return bool(existing.get("name") == wanted["name"] and base == wanted["plugins"])
