"""Which pods belong in the mesh: Istio's enrollment rules as a pure function.

A pod is enrolled when it carries ``istio.io/dataplane-mode=ambient``, or when its namespace does
and the pod is not set to ``none``. Host-network pods, sidecar-injected pods, pods of excluded
namespaces and finished pods never are (reference section 3.2). The agent decides with it, and
the CNI plugin too when the agent cannot be asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from inmesh.cluster.model import NamespaceMeta, PodMeta
from inmesh.constants import ANNOTATION_SIDECAR_STATUS, LABEL_DATAPLANE_MODE

MODE_AMBIENT = "ambient"
MODE_NONE = "none"

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
