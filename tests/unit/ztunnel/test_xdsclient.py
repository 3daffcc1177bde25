"""The node proxy's xDS client against the control plane's ADS server, over a real grpc.aio
channel on a unix socket, fed by the cluster store (pods added, annotated, deleted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import grpc
import pytest
import uvloop

from inmesh.cluster.model import PodMeta
from inmesh.cluster.store import FileClusterStore
from inmesh.constants import ANNOTATION_REDIRECTION
from inmesh.controlplane.discovery import StoreWorkloadSource, workload_uid
from inmesh.errors import ConfigError
from inmesh.xds.resources import Resource, content_version
from inmesh.xds.server import AdsServer
from inmesh.ztunnel.workloads import WorkloadTable
from inmesh.ztunnel.xdsclient import XdsClient, XdsClientSettings
from tests.unit.xds.helpers import (
    TEST_TIMEOUT,
    FakeSource,
    channel_to,
    eventually,
    serving,
    socket_path,
    workload,
)

T = TypeVar("T")

FAST = XdsClientSettings(initial_backoff=0.005, max_backoff=0.05)
"""Reconnect within milliseconds so that tests do not wait."""

POLL = 0.005
"""Store poll interval for tests, seconds."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """uvloop, as in the ztunnel process, with a deadline."""

    async def bounded() -> T:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await coro

    return uvloop.run(bounded())


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    with socket_path(tmp_path) as p:
        yield p


class RecordingTable(WorkloadTable):
    """A WorkloadTable that remembers what each applied update added and removed."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[set[str], set[str]]] = []

    def apply(self, added: Mapping[str, bytes], removed: Collection[str]) -> None:
        super().apply(added, removed)
        self.updates.append((set(added), set(removed)))


class CountingFactory:
    def __init__(self, path: str) -> None:
        self.path = path
        self.calls = 0

    def __call__(self) -> grpc.aio.Channel:
        self.calls += 1
        return channel_to(self.path)


def pod(name: str, ip: str, **kw: Any) -> PodMeta:
    return PodMeta(uid=f"k8s-{name}", name=name, namespace="shop", node="n1", ips=(ip,), **kw)


def uid(name: str) -> str:
    return workload_uid("c1", "shop", name)


@asynccontextmanager
async def client_running(client: XdsClient) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@asynccontextmanager
async def control_plane(path: str, store: FileClusterStore) -> AsyncIterator[AdsServer]:
    source = StoreWorkloadSource(store, cluster_id="c1", poll_interval=POLL)
    poller = asyncio.create_task(source.run())
    try:
        async with serving(path, source) as ads:
            yield ads
    finally:
        poller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poller


def test_full_state_then_pod_added_annotated_and_deleted(path: str, tmp_path: Path) -> None:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    store.put_pod(pod("a", "10.0.0.1"))

    async def body() -> None:
        table = WorkloadTable()
        client = XdsClient(CountingFactory(path), "ztunnel~n1", table, FAST)
        async with control_plane(path, store), client_running(client):
            await client.wait_synced()
            assert table.by_ip("10.0.0.1") == table.by_name(uid("a"))
            assert not table.hbone_capable("10.0.0.1")
            store.put_pod(pod("b", "fd00::2"))
            await eventually(lambda: table.by_ip("fd00::2") is not None)
            enabled = MappingProxyType({ANNOTATION_REDIRECTION: "enabled"})
            store.put_pod(pod("b", "fd00::2", annotations=enabled))
            await eventually(lambda: table.hbone_capable("fd00::2"))
            store.delete_pod("k8s-a")
            await eventually(lambda: table.by_ip("10.0.0.1") is None)
            assert [w["name"] for w in table.dump()["workloads"]] == ["b"]
            assert client.connected
            assert client.nacks == 0

    run(body())


def test_reconnect_resubscribes_and_gets_only_what_changed(path: str, tmp_path: Path) -> None:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    for name, ip in (("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")):
        store.put_pod(pod(name, ip))

    async def body() -> RecordingTable:
        table = RecordingTable()
        factory = CountingFactory(path)
        client = XdsClient(factory, "ztunnel~n1", table, FAST)
        async with client_running(client):
            async with control_plane(path, store):
                await client.wait_synced()
            await eventually(lambda: not client.connected)
            # While the control plane is down: b changes, c goes, d arrives, a stays.
            enabled = MappingProxyType({ANNOTATION_REDIRECTION: "enabled"})
            store.put_pod(pod("b", "10.0.0.2", annotations=enabled))
            store.delete_pod("k8s-c")
            store.put_pod(pod("d", "10.0.0.4"))
            async with control_plane(path, store):
                await eventually(lambda: len(table.updates) >= 2)
            assert factory.calls >= 2
        return table

    table = run(body())
    assert table.updates[0] == ({uid("a"), uid("b"), uid("c")}, set())
    assert table.updates[1] == ({uid("b"), uid("d")}, {uid("c")})
    assert table.hbone_capable("10.0.0.2")
    assert table.by_ip("10.0.0.3") is None


def test_nack_keeps_the_stream_and_the_table(path: str) -> None:
    bad = Resource("bad", content_version(b"\x0a\x03\x1a\x01\x01"), b"\x0a\x03\x1a\x01\x01")
    good = workload("a")

    async def body() -> None:
        source = FakeSource(good)
        table = WorkloadTable()
        factory = CountingFactory(path)
        client = XdsClient(factory, "ztunnel~n1", table, FAST)
        async with serving(path, source) as ads, client_running(client):
            await client.wait_synced()
            source.set(good, bad)
            await eventually(lambda: client.nacks == 1)
            assert (len(table), table.generation) == (1, 1)
            source.set(good, workload("b", b"\x0a\x00\x00\x02", hbone=True))
            await eventually(lambda: table.hbone_capable("10.0.0.2"))
            assert (factory.calls, ads.active_streams, client.nacks) == (1, 1, 1)

    run(body())


def test_two_clients_converge(path: str, tmp_path: Path) -> None:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    store.put_pod(pod("a", "10.0.0.1"))

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        tables = WorkloadTable(), WorkloadTable()
        clients = [XdsClient(CountingFactory(path), f"ztunnel~n{i}", t, FAST) for i, t in enumerate(tables)]
        async with control_plane(path, store) as ads, clients_running(clients):
            await asyncio.gather(*(c.wait_synced() for c in clients))
            assert ads.active_streams == 2
            enabled = MappingProxyType({ANNOTATION_REDIRECTION: "enabled"})
            store.put_pod(pod("b", "10.0.0.2", annotations=enabled))
            store.delete_pod("k8s-a")
            want = {uid("b")}
            await eventually(
                lambda: all({w["uid"] for w in t.dump()["workloads"]} == want for t in tables)
            )
        return tables[0].dump(), tables[1].dump()

    first, second = run(body())
    assert first["workloads"] == second["workloads"]
    assert first["workloads"][0]["tunnelProtocol"] == "HBONE"


@asynccontextmanager
async def clients_running(clients: list[XdsClient]) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(c.run()) for c in clients]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with pytest.raises(asyncio.CancelledError):
                await task


def test_client_started_before_the_control_plane_syncs_once_it_is_up(path: str, tmp_path: Path) -> None:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    store.put_pod(pod("a", "10.0.0.1"))

    async def body() -> int:
        factory = CountingFactory(path)
        client = XdsClient(factory, "ztunnel~n1", WorkloadTable(), FAST)
        async with client_running(client):
            await eventually(lambda: factory.calls >= 3)
            assert not client.synced
            async with control_plane(path, store):
                await client.wait_synced()
        return factory.calls

    assert run(body()) >= 3


def test_factory_that_cannot_read_credentials_is_retried(path: str) -> None:
    attempts: list[int] = []

    def flaky() -> grpc.aio.Channel:
        attempts.append(1)
        if len(attempts) < 3:
            raise FileNotFoundError("node-cert.pem")
        return channel_to(path)

    async def body() -> None:
        client = XdsClient(flaky, "n", WorkloadTable(), FAST)
        async with serving(path, FakeSource(workload("a"))), client_running(client):
            await client.wait_synced()

    run(body())
    assert len(attempts) >= 3


def test_backoff_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="back-off"):
        XdsClientSettings(initial_backoff=1.0, max_backoff=0.5)
