"""The reconcile loop follows the source: label on → enrolled, label off → removed, pod gone →
dropped; a restarted agent re-adopts what it had enrolled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inmesh.agent import reconcile
from inmesh.agent.reconcile import Backoff, Reconciler
from inmesh.agent.service import PodRegistry, PodState
from inmesh.agent.settings import AgentSettings
from inmesh.agent.state import StateFile
from inmesh.cluster.model import PodMeta
from inmesh.cluster.store import FileClusterStore
from inmesh.errors import InmeshError
from tests.unit.agent.fakes import FakeBackend, FakeZds

NETNS = "/proc/self/ns/net"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


@pytest.fixture(autouse=True)
def _ownership_always_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    # the IP-ownership check needs root (setns); the system tier covers it for real
    monkeypatch.setattr(reconcile.procscan, "owns_ips", lambda path, ips: path == NETNS)


def setup(tmp_path: Path) -> tuple[Reconciler, FileClusterStore, FakeBackend, FakeZds]:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    settings = AgentSettings(node="n1", store=store.path, run_dir=str(tmp_path),
                             zds_socket=str(tmp_path / "z.sock"), state_dir=str(tmp_path / "st"))
    backend, zds = FakeBackend(), FakeZds()
    reg = PodRegistry(backend, zds, StateFile(settings.state_file))
    return Reconciler(settings, store, reg), store, backend, zds


def running(labels: dict[str, str], node: str = "n1", uid: str = "u1") -> PodMeta:
    return PodMeta(uid=uid, name="web", namespace="shop", node=node, labels=labels,
                   ips=("10.0.0.2",), netns=NETNS)


def test_label_changes_enroll_and_unenroll_running_pods(tmp_path: Path) -> None:
    rec, store, backend, zds = setup(tmp_path)
    store.put_pod(running({}))
    asyncio.run(rec.run_once(now=0))
    assert rec.registry.pods == {}
    store.set_namespace_labels("shop", AMBIENT)
    asyncio.run(rec.run_once(now=1))
    assert rec.registry.pods["u1"].state is PodState.ENROLLED
    store.put_pod(running({"istio.io/dataplane-mode": "none"}))
    asyncio.run(rec.run_once(now=2))
    assert rec.registry.pods == {}
    assert len(backend.removed) == 1
    assert zds.dels == ["u1"]


def test_other_nodes_and_pending_pods_are_left_alone(tmp_path: Path) -> None:
    rec, store, backend, _ = setup(tmp_path)
    store.put_pod(running(AMBIENT, node="n2", uid="other"))
    store.put_pod(PodMeta(uid="u2", name="starting", namespace="shop", node="n1",
                          labels=AMBIENT, phase="Pending"))
    asyncio.run(rec.run_once(now=0))
    assert rec.registry.pods == {}
    assert backend.applied == []


def test_deleted_pod_is_dropped_without_touching_rules(tmp_path: Path) -> None:
    rec, store, backend, zds = setup(tmp_path)
    store.put_pod(running(AMBIENT))
    asyncio.run(rec.run_once(now=0))
    store.delete_pod("u1")
    asyncio.run(rec.run_once(now=1))
    assert rec.registry.pods == {}
    assert backend.removed == []
    assert zds.dels == ["u1"]


def test_pending_pods_are_offered_again_once_a_proxy_connects(tmp_path: Path) -> None:
    rec, store, _, zds = setup(tmp_path)
    zds.fail_with, zds.connection_count = InmeshError("no ztunnel connection"), 0
    store.put_pod(running(AMBIENT))
    asyncio.run(rec.run_once(now=0))
    assert rec.registry.pods["u1"].state is PodState.PENDING
    assert "no ztunnel connection" in rec.last_errors["u1"]
    zds.fail_with, zds.connection_count = None, 1
    asyncio.run(rec.run_once(now=100))
    assert rec.registry.pods["u1"].state is PodState.ENROLLED
    assert "u1" not in rec.last_errors


def test_restart_restores_enrolled_pods_and_forgets_deleted_ones(tmp_path: Path) -> None:
    rec, store, _, _ = setup(tmp_path)
    store.put_pod(running(AMBIENT))
    store.put_pod(running(AMBIENT, uid="u9"))
    asyncio.run(rec.run_once(now=0))
    assert set(rec.registry.pods) == {"u1", "u9"}
    records = StateFile(rec.settings.state_file).load()
    rec.registry.close()
    store.delete_pod("u9")

    rec2, _, backend2, _ = setup(tmp_path)
    asyncio.run(rec2.restore(records))
    assert set(rec2.registry.pods) == {"u1"}
    assert rec2.registry.pods["u1"].state is PodState.PENDING  # until the proxy acks again
    assert len(backend2.applied) == 1  # rules reconciled, not blindly re-added
    rec2.registry.close()


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    b = Backoff(cap=2.0)
    assert b.ready("u", 0)
    b.failed("u", 0)
    assert not b.ready("u", 0.4)
    assert b.ready("u", 0.5)
    for _ in range(10):
        b.failed("u", 0)
    assert b.ready("u", 2.0)
    b.succeeded("u")
    assert b.ready("u", 0)
