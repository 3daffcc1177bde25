"""The redirect spec follows the pod's addresses and its bypass annotation."""

from __future__ import annotations

from inmesh.agent.rulespec import redirect_spec_for
from inmesh.cluster.model import PodMeta


def pod(**kw: object) -> PodMeta:
    return PodMeta(uid="u", name="p", namespace="ns", node="n1", **kw)  # type: ignore[arg-type]


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
