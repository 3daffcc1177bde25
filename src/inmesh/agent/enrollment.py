"""Which pods belong in the mesh: Istio's enrollment rules as a pure function.

A pod is enrolled when it carries ``istio.io/dataplane-mode=ambient``, or when its namespace does
and the pod is not set to ``none``. Host-network pods, sidecar-injected pods, pods of excluded
namespaces and finished pods never are (reference section 3.2).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from inmesh.agent.podsource import NamespaceMeta, PodMeta
from inmesh.constants import (
    ANNOTATION_BYPASS_INBOUND,
    ANNOTATION_SIDECAR_STATUS,
    LABEL_DATAPLANE_MODE,
)
from inmesh.redirect.model import RedirectSpec

MODE_AMBIENT = "ambient"
MODE_NONE = "none"

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


@dataclass(frozen=True)
class Decision:
    enroll: bool
    reason: str


def decide(
    pod: PodMeta, namespace: NamespaceMeta, excluded_namespaces: frozenset[str] = frozenset()
) -> Decision:
    """Should ``pod`` be in the mesh? The reason is shown to operators (status, CNI replies)."""
    if pod.host_network:
        return Decision(False, "host-network pods are never captured")
    if ANNOTATION_SIDECAR_STATUS in pod.annotations:
        return Decision(False, "pod has a sidecar")
    if pod.terminal:
        return Decision(False, f"pod is {pod.phase}")
    if pod.namespace in excluded_namespaces:
        return Decision(False, f"namespace {pod.namespace} is excluded")
    pod_mode = pod.labels.get(LABEL_DATAPLANE_MODE)
    if pod_mode == MODE_AMBIENT:
        return Decision(True, f"pod label {LABEL_DATAPLANE_MODE}={MODE_AMBIENT}")
    if pod_mode == MODE_NONE:
        return Decision(False, f"pod label {LABEL_DATAPLANE_MODE}={MODE_NONE}")
    if namespace.labels.get(LABEL_DATAPLANE_MODE) == MODE_AMBIENT:
        return Decision(True, f"namespace label {LABEL_DATAPLANE_MODE}={MODE_AMBIENT}")
    return Decision(False, "no ambient label on pod or namespace")


def redirect_spec_for(pod: PodMeta, ips: tuple[str, ...]) -> RedirectSpec:
    """The rule set a pod needs: families from its addresses, inbound capture unless bypassed."""
    versions = {ipaddress.ip_address(ip.split("/")[0]).version for ip in ips}
    bypass = pod.annotations.get(ANNOTATION_BYPASS_INBOUND, "") in _TRUE
    return RedirectSpec(
        ipv4=4 in versions or not versions,
        ipv6=6 in versions,
        inbound_capture=not bypass,
    )
