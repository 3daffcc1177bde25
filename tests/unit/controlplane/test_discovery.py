"""Workloads built from pods the way istiod builds them, and the store-polling snapshot source."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import MappingProxyType

import pytest

from inmesh.cluster.model import PodMeta
from inmesh.cluster.store import FileClusterStore
from inmesh.constants import ANNOTATION_REDIRECTION
from inmesh.controlplane.discovery import (
    DEFAULT_CLUSTER_ID,
    StoreWorkloadSource,
    build_snapshot,
    pod_workload,
    workload_uid,
)
from inmesh.errors import ConfigError
from inmesh.xds.proto import workload_pb2
from inmesh.xds.resources import address_resource

TD = "cluster.local"


def pod(name: str = "web-0", **kw: object) -> PodMeta:
    fields: dict[str, object] = {
        "uid": f"k8s-{name}", "name": name, "namespace": "shop", "node": "n1",
        "service_account": "web", "ips": ("10.0.0.1",),
    }
    fields.update(kw)
    return PodMeta(**fields)  # type: ignore[arg-type]


def build(p: PodMeta, td: str = TD, cluster: str = "c1") -> workload_pb2.Workload:
    w = pod_workload(p, td, cluster)
    assert w is not None
    return w


def test_pod_becomes_an_istio_shaped_workload() -> None:
    w = build(pod(labels=MappingProxyType({"app": "web", "version": "v2"})))
    assert w == workload_pb2.Workload(
        uid="c1//Pod/shop/web-0", name="web-0", namespace="shop",
        addresses=[b"\x0a\x00\x00\x01"], tunnel_protocol=workload_pb2.NONE, trust_domain="",
        service_account="web", node="n1", canonical_name="web", canonical_revision="v2",
        workload_type=workload_pb2.POD, workload_name="web-0", status=workload_pb2.HEALTHY,
        cluster_id="c1",
    )
    assert workload_uid(DEFAULT_CLUSTER_ID, "ns", "p") == "Kubernetes//Pod/ns/p"


def test_hbone_only_once_the_agent_annotated_redirection_enabled() -> None:
    """Reference 1.2 step 7: the annotation is the signal that the pod can receive HBONE."""
    def protocol(annotations: dict[str, str]) -> int:
        return build(pod(annotations=MappingProxyType(annotations))).tunnel_protocol

    assert protocol({ANNOTATION_REDIRECTION: "enabled"}) == workload_pb2.HBONE
    assert protocol({ANNOTATION_REDIRECTION: "pending"}) == workload_pb2.NONE
    assert protocol({}) == workload_pb2.NONE
    assert protocol({"istio.io/dataplane-mode": "ambient"}) == workload_pb2.NONE


def test_addresses_are_packed_deduplicated_and_v4_mapped_unwrapped() -> None:
    w = build(pod(ips=("10.0.0.1", "fd00::1", "::ffff:10.0.0.1")))
    assert list(w.addresses) == [b"\x0a\x00\x00\x01", b"\xfd\x00" + b"\x00" * 13 + b"\x01"]


def test_default_trust_domain_is_elided_others_kept() -> None:
    assert build(pod(), td="cluster.local").trust_domain == ""
    assert build(pod(), td="example.org").trust_domain == "example.org"


def test_canonical_labels_follow_istio_precedence() -> None:
    labels = {"app": "a", "app.kubernetes.io/name": "k", "service.istio.io/canonical-name": "c"}
    assert build(pod(labels=MappingProxyType(labels))).canonical_name == "c"
    assert build(pod(labels=MappingProxyType({"app": "a"}))).canonical_name == "a"
    assert build(pod()).canonical_name == "web-0"
    assert build(pod()).canonical_revision == "latest"


def test_pending_pod_with_an_ip_is_unhealthy() -> None:
    assert build(pod(phase="Pending")).status == workload_pb2.UNHEALTHY


@pytest.mark.parametrize(
    "p",
    [
        pod(phase="Succeeded"),
        pod(phase="Failed"),
        pod(host_network=True),
        pod(ips=()),
        pod(ips=("10.0.0.300",)),
    ],
    ids=["succeeded", "failed", "host-network", "no-ip", "bad-ip"],
)
def test_pods_that_are_not_workloads_are_left_out(p: PodMeta) -> None:
    assert pod_workload(p, TD, "c1") is None


def _store(tmp_path: Path) -> FileClusterStore:
    return FileClusterStore(str(tmp_path / "cluster.json"))


def test_snapshot_holds_one_address_per_workload_named_by_uid(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put_pod(pod("a"))
    store.put_pod(pod("b", ips=("10.0.0.2",)))
    store.put_pod(pod("gone", phase="Succeeded"))
    snap = build_snapshot(store.view(), TD, "c1", 7)
    assert snap.generation == 7
    assert sorted(snap.resources) == ["c1//Pod/shop/a", "c1//Pod/shop/b"]
    a = snap.resources["c1//Pod/shop/a"]
    assert a == address_resource(a.name, workload_pb2.Address(workload=build(pod("a"))))


def test_source_bumps_generation_only_when_a_workload_changed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    source = StoreWorkloadSource(store, cluster_id="c1")
    assert (source.snapshot().generation, len(source.snapshot().resources)) == (0, 0)
    store.put_pod(pod("a"))
    assert source.refresh()
    assert source.snapshot().generation == 1
    store.put_pod(pod("a", netns="/var/run/netns/x"))  # not part of the Workload
    assert not source.refresh()
    store.put_pod(pod("a", annotations=MappingProxyType({ANNOTATION_REDIRECTION: "enabled"})))
    snap = source.snapshot()
    assert snap.generation == 2
    body = snap.resources["c1//Pod/shop/a"].body
    assert workload_pb2.Address.FromString(body).workload.tunnel_protocol == workload_pb2.HBONE
    store.delete_pod("k8s-a")
    assert source.snapshot().resources == {}


def test_unreadable_store_keeps_the_last_snapshot(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put_pod(pod("a"))
    source = StoreWorkloadSource(store)
    before = source.snapshot()
    Path(store.path).write_text("{not json")
    assert not source.refresh()
    assert source.snapshot() is before


def test_waiters_are_woken_by_the_poller(tmp_path: Path) -> None:
    store = _store(tmp_path)
    source = StoreWorkloadSource(store, poll_interval=0.005)

    async def body() -> list[str]:
        async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
            poller = tg.create_task(source.run())
            waiter = tg.create_task(source.wait_changed(source.snapshot().generation))
            await asyncio.sleep(0)
            assert not waiter.done()
            store.put_pod(pod("a"))
            snap = await waiter
            poller.cancel()
        return sorted(snap.resources)

    assert asyncio.run(body()) == [workload_uid(DEFAULT_CLUSTER_ID, "shop", "a")]


def test_wait_changed_returns_at_once_for_an_old_generation(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put_pod(pod("a"))
    source = StoreWorkloadSource(store)
    current = source.snapshot()
    assert asyncio.run(source.wait_changed(current.generation - 1)) is current


def test_store_file_format_is_the_labs(tmp_path: Path) -> None:
    """The source reads what the lab writes: a pods map keyed by k8s uid."""
    (tmp_path / "cluster.json").write_text(json.dumps({"pods": {"u": pod("a").to_json()}}))
    source = StoreWorkloadSource(_store(tmp_path), trust_domain="example.org")
    (res,) = source.snapshot().resources.values()
    assert workload_pb2.Address.FromString(res.body).workload.trust_domain == "example.org"


def test_poll_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="poll interval"):
        StoreWorkloadSource(_store(tmp_path), poll_interval=0)
