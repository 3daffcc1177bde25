"""The agent core: enroll, hand to the proxy, persist, un-enroll; no leaked netns fds.

"/proc/self/ns/net" stands in for a pod's netns: opening it needs no root, and the fake backend
records which namespace path it was asked to act on.
"""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

import pytest

from inmesh.agent.service import EnrollError, PodRegistry, PodState
from inmesh.agent.state import StateFile
from inmesh.cluster.model import PodMeta
from inmesh.errors import InmeshError
from inmesh.redirect import RedirectSpec
from tests.unit.agent.fakes import FakeBackend, FakeZds

NETNS = "/proc/self/ns/net"
POD_SPEC = RedirectSpec()
POD = PodMeta(uid="u1", name="web", namespace="shop", node="n1", service_account="websa",
              labels={"istio.io/dataplane-mode": "ambient"}, ips=("10.0.0.2",))


def open_fds() -> set[int]:
    """Open fds after a GC pass; leak checks use ``<=`` (nothing new open), since other tests'
    garbage may close fds at any time."""
    gc.collect()
    return {int(name) for name in os.listdir("/proc/self/fd")}


def make(tmp_path: Path) -> tuple[PodRegistry, FakeBackend, FakeZds, StateFile]:
    backend, zds, state = FakeBackend(), FakeZds(), StateFile(str(tmp_path / "state.json"))
    return PodRegistry(backend, zds, state), backend, zds, state


def test_enroll_installs_rules_hands_to_proxy_and_persists(tmp_path: Path) -> None:
    reg, backend, zds, state = make(tmp_path)
    entry = asyncio.run(reg.enroll(POD, NETNS, POD.ips, "c1"))
    assert entry.state is PodState.ENROLLED
    assert backend.applied[0][0] == entry.fd_path
    assert backend.applied[0][1].ipv4
    assert zds.adds == [("u1", entry.info)]
    assert entry.info.service_account == "websa"
    assert state.load()["u1"].container_id == "c1"
    assert [s.uid for s in reg.snapshot()] == ["u1"]
    reg.close()


def test_enrolling_twice_keeps_one_fd_and_one_entry(tmp_path: Path) -> None:
    reg, _, zds, _ = make(tmp_path)
    asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    before = open_fds()
    asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    assert open_fds() <= before
    assert list(reg.pods) == ["u1"]
    assert len(zds.adds) == 2  # the proxy treats the second Add (same netns) as a no-op
    reg.close()


def test_proxy_unavailable_leaves_pod_pending_with_rules_then_retry_succeeds(tmp_path: Path) -> None:
    reg, backend, zds, _ = make(tmp_path)
    zds.fail_with = InmeshError("no ztunnel connection")
    with pytest.raises(EnrollError) as info:
        asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    assert info.value.retryable
    assert reg.pods["u1"].state is PodState.PENDING
    assert backend.applied  # fail closed: rules stay, traffic is refused until the proxy is up
    zds.fail_with = None
    asyncio.run(reg.retry_pending("u1"))
    assert reg.pods["u1"].state is PodState.ENROLLED
    reg.close()


def test_rule_failure_is_not_retryable_and_leaves_nothing_behind(tmp_path: Path) -> None:
    reg, backend, zds, state = make(tmp_path)
    backend.fail_apply = True
    before = open_fds()
    with pytest.raises(EnrollError, match="installing rules failed") as info:
        asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    assert not info.value.retryable
    assert reg.pods == {}
    assert zds.adds == []
    assert open_fds() <= before
    assert state.load() == {}


def test_missing_netns_is_a_clear_error(tmp_path: Path) -> None:
    reg, _, _, _ = make(tmp_path)
    with pytest.raises(EnrollError, match="shop/web: cannot open netns"):
        asyncio.run(reg.enroll(POD, str(tmp_path / "nope"), POD.ips))


def test_unenroll_removes_rules_unless_deleted_and_tells_every_proxy(tmp_path: Path) -> None:
    reg, backend, zds, state = make(tmp_path)
    before = open_fds()
    asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    fd_path = reg.pods["u1"].fd_path
    assert asyncio.run(reg.unenroll("u1", pod_deleted=False))
    assert backend.removed == [fd_path]
    assert zds.dels == ["u1"]
    assert open_fds() <= before
    assert state.load() == {}
    assert not asyncio.run(reg.unenroll("u1", pod_deleted=False))

    asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    assert asyncio.run(reg.unenroll("u1", pod_deleted=True))
    assert len(backend.removed) == 1  # a deleted pod's netns is going away: rules untouched


def test_redirection_annotation_follows_the_pod_state(tmp_path: Path) -> None:
    marks: list[tuple[str, str, str | None]] = []
    backend, zds, state = FakeBackend(), FakeZds(), StateFile(str(tmp_path / "s.json"))
    reg = PodRegistry(backend, zds, state, annotate=lambda *a: marks.append(a))
    zds.fail_with = InmeshError("no ztunnel connection")
    with pytest.raises(EnrollError):
        asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    zds.fail_with = None
    asyncio.run(reg.retry_pending("u1"))
    asyncio.run(reg.enroll(POD, NETNS, POD.ips))  # unchanged: not written again
    asyncio.run(reg.unenroll("u1", pod_deleted=False))
    key = "ambient.istio.io/redirection"
    assert marks == [("u1", key, "pending"), ("u1", key, "enabled"), ("u1", key, None)]


def test_drift_is_repaired(tmp_path: Path) -> None:
    reg, backend, _, _ = make(tmp_path)
    asyncio.run(reg.enroll(POD, NETNS, POD.ips))
    backend.drift = ["nat chain istio-output: rule missing"]
    assert asyncio.run(reg.verify_and_repair("u1")) == ["nat chain istio-output: rule missing"]
    assert len(backend.applied) == 2
    assert asyncio.run(reg.verify_and_repair("u1")) == []
    reg.close()


def test_restore_sweeps_rules_of_a_backend_no_longer_in_use(tmp_path: Path) -> None:
    from inmesh.agent.state import EnrolledRecord

    old = FakeBackend(name="iptables", applied=[("x", POD_SPEC)])
    backend, zds, state = FakeBackend(name="nftables"), FakeZds(), StateFile(str(tmp_path / "s.json"))
    reg = PodRegistry(backend, zds, state, other_backends=[old])
    rec = EnrolledRecord("u1", "web", "shop", "websa", NETNS, 0, 0, POD.ips)
    asyncio.run(reg.restore(rec, POD, NETNS))
    assert old.removed == [NETNS]
    assert len(backend.applied) == 1
    reg.close()
