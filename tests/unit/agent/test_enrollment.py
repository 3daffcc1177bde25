"""Enrollment follows Istio's label rules, and the redirect spec follows the pod's addresses."""

from __future__ import annotations

import pytest

from inmesh.agent.enrollment import decide, redirect_spec_for
from inmesh.agent.podsource import NamespaceMeta, PodMeta

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


def test_redirect_spec_families_follow_the_pod_ips() -> None:
    assert redirect_spec_for(pod(), ("10.0.0.2",)).ipv4
    assert not redirect_spec_for(pod(), ("10.0.0.2",)).ipv6
    dual = redirect_spec_for(pod(), ("10.0.0.2", "fd00::2"))
    assert dual.ipv4
    assert dual.ipv6
    v6 = redirect_spec_for(pod(), ("fd00::2/64",))
    assert (v6.ipv4, v6.ipv6) == (False, True)


def test_bypass_inbound_annotation_turns_off_inbound_capture() -> None:
    p = pod(annotations={"ambient.istio.io/bypass-inbound-capture": "true"})
    assert not redirect_spec_for(p, ("10.0.0.2",)).inbound_capture
    p = pod(annotations={"ambient.istio.io/bypass-inbound-capture": "yes-please"})
    assert redirect_spec_for(p, ("10.0.0.2",)).inbound_capture  # unparsable means "not set"
