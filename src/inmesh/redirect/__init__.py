"""In-pod traffic redirection: Istio's rule sets (iptables or native nftables) plus the ip rule
and local route, built by pure functions, applied atomically in a pod netns, verified, removed.

Where things are: `model` (the spec, Istio's names), `iptables` + `iptsave` (rules, restore plan,
iptables-save parsing), `nftables` + `nftterms` + `nftjson` (rules, nft transaction, JSON
reading), `routes` (ip rule/route over netlink inside the netns), `backend` (the I/O shells).
"""

from inmesh.redirect.backend import (
    IptablesBackend,
    NftablesBackend,
    RuleBackend,
    nft_usable,
    select_backend,
)
from inmesh.redirect.model import RedirectSpec, RuleParseError

__all__ = [
    "IptablesBackend",
    "NftablesBackend",
    "RedirectSpec",
    "RuleBackend",
    "RuleParseError",
    "nft_usable",
    "select_backend",
]
