"""Enrollment follows Istio's label rules."""

from __future__ import annotations

import pytest

from inmesh.cluster.enrollment import decide
from inmesh.cluster.model import NamespaceMeta, PodMeta

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
NONE = {"istio.io/dataplane-mode": "none"}


def pod(labels: dict[str, str] | None = None, **kw: object) -> PodMeta:
    return PodMeta(uid="u", name="p", namespace="ns", node="n1", labels=labels or {}, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pod_labels", "ns_labels", "expected"),
    [
        (AMBIENT, {}, True),
        ({}, AMBIENT, True),
        (NONE, AMBIENT, False),
        ({}, {}, False),
        ({"istio.io/dataplane-mode": "other"}, AMBIENT, True),
        (AMBIENT, NONE, True),
    ],
)
def test_pod_or_namespace_label_decides(
    pod_labels: dict[str, str], ns_labels: dict[str, str], expected: bool
) -> None:
    assert decide(pod(pod_labels), NamespaceMeta("ns", ns_labels)).enroll is expected


def test_host_network_sidecar_terminal_and_excluded_pods_are_never_enrolled() -> None:
    ns = NamespaceMeta("ns", AMBIENT)
    assert not decide(pod(AMBIENT, host_network=True), ns).enroll
    assert not decide(pod(AMBIENT, annotations={"sidecar.istio.io/status": "{}"}), ns).enroll
    assert not decide(pod(AMBIENT, phase="Succeeded"), ns).enroll
    excluded = decide(pod(AMBIENT), ns, frozenset({"ns"}))
    assert not excluded.enroll
    assert "excluded" in excluded.reason
