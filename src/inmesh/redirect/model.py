"""What a pod's redirection looks like, independent of the backend: the spec and Istio's names.

Sans-io. `RedirectSpec` is the per-pod input (families, ingress mode, DNS, virtual interfaces);
the constants are Istio's chain/table names and addresses, so that an Istio agent could take
over a pod enrolled by us (and back) and find exactly the rules it would have written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inmesh.constants import (
    CONN_MARK,
    MARK_MASK,
    PROBE_SNAT_V4,
    PROBE_SNAT_V6,
    PROXY_MARK,
)
from inmesh.errors import ConfigError, KernelError

# iptables (reference 4.2): two custom chains in each of mangle, nat and raw.
CHAIN_PRERT = "ISTIO_PRERT"
CHAIN_OUTPUT = "ISTIO_OUTPUT"
OUR_CHAINS = (CHAIN_PRERT, CHAIN_OUTPUT)
IPT_TABLES = ("mangle", "nat", "raw")

# nftables (reference 4.4): three tables of family inet.
NFT_FAMILY = "inet"
NFT_TABLE_NAT = "istio-ambient-nat"
NFT_TABLE_MANGLE = "istio-ambient-mangle"
NFT_TABLE_RAW = "istio-ambient-raw"
NFT_TABLES = (NFT_TABLE_NAT, NFT_TABLE_MANGLE, NFT_TABLE_RAW)

LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
PROBE_SNAT = {4: PROBE_SNAT_V4, 6: PROBE_SNAT_V6}
PROBE_SNAT_PREFIX = {4: f"{PROBE_SNAT_V4}/32", 6: f"{PROBE_SNAT_V6}/128"}

RESTORE_MASK = 0xFFFFFFFF
"""CONNMARK --restore-mark copies all 32 bits (Istio's InpodRestoreMask)."""
DNS_PORT_UPSTREAM = 53
CT_ZONE_DNS = 1
"""Conntrack zone for the proxy's upstream DNS flows (istio/istio#33469)."""

FAMILIES = (4, 6)

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
"""Linux interface names are at most 15 bytes; we accept the portable subset so that a name can
never be read as iptables/nft syntax (no '+'/'*' wildcards, spaces, quotes or slashes)."""


class RuleParseError(KernelError):
    """iptables-save or `nft -j` printed something we cannot read (a tool/kernel mismatch)."""


@dataclass(frozen=True)
class RedirectSpec:
    """The redirection one pod needs. Build it from the pod (see agent.enrollment)."""

    ipv4: bool = True
    ipv6: bool = False
    """Set when the pod has an IPv6 address."""
    inbound_capture: bool = True
    """False = annotation ambient.istio.io/bypass-inbound-capture=true ("ingress mode")."""
    dns_capture: bool = False
    """Redirect the pod's DNS to the proxy's 15053 (our proxy has no DNS server yet)."""
    virtual_interfaces: tuple[str, ...] = ()
    """istio.io/reroute-virtual-interfaces: inbound TCP on these is treated as outbound."""

    def __post_init__(self) -> None:
        if not (self.ipv4 or self.ipv6):
            raise ConfigError("RedirectSpec needs at least one address family (ipv4 or ipv6)")
        if isinstance(self.virtual_interfaces, str):
            raise ConfigError("virtual_interfaces must be a tuple of names, not a string")
        for name in self.virtual_interfaces:
            if not _IFNAME.fullmatch(name):
                raise ConfigError(f"invalid virtual interface name {name!r}")
        if len(set(self.virtual_interfaces)) != len(self.virtual_interfaces):
            raise ConfigError(f"duplicate virtual interface in {self.virtual_interfaces!r}")

    def families(self) -> tuple[int, ...]:
        """The IP versions that get rules, in order (4 before 6)."""
        return tuple(v for v, on in ((4, self.ipv4), (6, self.ipv6)) if on)


def hexmark(value: int, mask: int | None = None) -> str:
    """A mark as iptables-save and nft print it: ``0x539`` or ``0x539/0xfff``."""
    return f"{value:#x}" if mask is None else f"{value:#x}/{mask:#x}"


PROXY_MARK_SPEC = hexmark(PROXY_MARK, MARK_MASK)
CONN_MARK_SPEC = hexmark(CONN_MARK, MARK_MASK)
