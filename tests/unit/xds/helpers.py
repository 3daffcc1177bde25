"""Shared helpers for the xDS tests: a fake snapshot source, a grpc.aio ADS server on a unix
socket, a raw delta stream, and an event-loop runner with a deadline."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from inmesh.xds.messages import DeltaRequest, request_to_proto
from inmesh.xds.proto import workload_pb2
from inmesh.xds.resources import ADDRESS_TYPE_URL, Resource, Snapshot, address_resource
from inmesh.xds.server import AdsServer, WorkloadSnapshotSource

T = TypeVar("T")

TEST_TIMEOUT = 20.0
"""Upper bound for one async test; a hang fails instead of blocking the suite."""

_SUN_PATH_MAX = 100
"""Unix socket paths must fit sockaddr_un (108 bytes); stay clear of it."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await coro

    return asyncio.run(bounded())


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll `predicate` until it holds, failing after `within` seconds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (polled state has no event of its own)
            await asyncio.sleep(0.005)


@contextmanager
def socket_path(tmp_path: Path, name: str = "ads.sock") -> Iterator[str]:
    """A unix socket path in `tmp_path`, or in a short private dir if that path is too long."""
    if len(str(tmp_path / name)) < _SUN_PATH_MAX:
        yield str(tmp_path / name)
        return
    short = tempfile.mkdtemp(prefix="imx-")
    try:
        yield str(Path(short) / name)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def workload(name: str, ip: bytes = b"\x0a\x00\x00\x01", hbone: bool = False) -> Resource:
    uid = f"c//Pod/ns/{name}"
    w = workload_pb2.Workload(
        uid=uid, name=name, namespace="ns", addresses=[ip], node="n1",
        tunnel_protocol=workload_pb2.HBONE if hbone else workload_pb2.NONE,
    )
    return address_resource(uid, workload_pb2.Address(workload=w))


class FakeSource:
    """A WorkloadSnapshotSource whose resources the test sets."""

    def __init__(self, *resources: Resource) -> None:
        self._snapshot = Snapshot.of(1, resources)
        self._changed: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def set(self, *resources: Resource) -> None:
        self._snapshot = Snapshot.of(self._snapshot.generation + 1, resources)
        self._event().set()
        self._changed = asyncio.Event()

    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def wait_changed(self, generation: int) -> Snapshot:
        while self._snapshot.generation == generation:
            await self._event().wait()
        return self._snapshot


@asynccontextmanager
async def serving(path: str, source: WorkloadSnapshotSource) -> AsyncIterator[AdsServer]:
    """An ADS server on unix socket `path` (insecure: the control plane app adds mTLS)."""
    server = grpc.aio.server()
    ads = AdsServer(source)
    ads.add_to_server(server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        yield ads
    finally:
        await server.stop(None)


def channel_to(path: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix:{path}")


class RawStream:
    """A hand-driven DeltaAggregatedResources stream, for protocol-level checks."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def send(self, req: DeltaRequest) -> None:
        await self.call.write(request_to_proto(req))

    async def recv(self) -> Any:
        msg = await self.call.read()
        assert msg is not grpc.aio.EOF, "stream ended"
        assert isinstance(msg, discovery_pb2.DeltaDiscoveryResponse)
        return msg

    async def ack(self, msg: Any) -> None:
        await self.send(DeltaRequest(msg.type_url, response_nonce=msg.nonce))


@asynccontextmanager
async def raw_stream(path: str, node_id: str = "raw") -> AsyncIterator[RawStream]:
    """A stream that has sent its Address subscription (legacy wildcard)."""
    async with channel_to(path) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        try:
            stream = RawStream(call)
            await stream.send(DeltaRequest(ADDRESS_TYPE_URL, node_id=node_id))
            yield stream
        finally:
            call.cancel()
