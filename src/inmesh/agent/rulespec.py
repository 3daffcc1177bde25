"""The in-pod rule set a pod needs, derived from its addresses and annotations (pure)."""

from __future__ import annotations

import ipaddress

from inmesh.cluster.model import PodMeta
from inmesh.constants import ANNOTATION_BYPASS_INBOUND
from inmesh.redirect.model import RedirectSpec

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
"""Go's strconv.ParseBool true values; anything unparsable means "not set" (as Istio)."""


def redirect_spec_for(pod: PodMeta, ips: tuple[str, ...]) -> RedirectSpec:
    """The rule set a pod needs: families from its addresses, inbound capture unless bypassed."""
    versions = {ipaddress.ip_address(ip.split("/")[0]).version for ip in ips}
    bypass = pod.annotations.get(ANNOTATION_BYPASS_INBOUND, "") in _TRUE
    return RedirectSpec(
        ipv4=4 in versions or not versions,
        ipv6=6 in versions,
        inbound_capture=not bypass,
    )
