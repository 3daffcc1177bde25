"""The control plane's ADS endpoint: a grpc.aio servicer for delta xDS, one stream per node proxy.

Each `DeltaAggregatedResources` stream runs a sans-io `DeltaServerStream` fed by the client's
requests and by the `WorkloadSnapshotSource`; the Address type carries the source's resources,
any other type a client asks for (ztunnel also asks for Authorization) is served empty.
A bad stream is closed on its own (INVALID_ARGUMENT with the reason); the others keep going.
State-of-the-world `StreamAggregatedResources` answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from inmesh.errors import RemoteProtocolError
from inmesh.xds.delta import (
    Acked,
    DeltaServerStream,
    Nacked,
    ServerEvent,
    ServerLimits,
    StaleNonce,
    Subscribed,
)
from inmesh.xds.messages import request_from_proto, response_to_proto
from inmesh.xds.resources import ADDRESS_TYPE_URL, Snapshot

__all__ = ["AdsServer", "WorkloadSnapshotSource"]

log = logging.getLogger(__name__)


class WorkloadSnapshotSource(Protocol):
    """Where the Address resources come from (`inmesh.controlplane.discovery`)."""

    def snapshot(self) -> Snapshot:
        """The current Address resources, keyed by resource name (a workload's uid)."""
        ...

    async def wait_changed(self, generation: int) -> Snapshot:
        """Return the newest snapshot as soon as its generation differs from `generation`."""
        ...


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves `source`'s workloads over delta ADS to every connected node proxy."""

    def __init__(self, source: WorkloadSnapshotSource, limits: ServerLimits | None = None):
        self._source = source
        self._limits = limits or ServerLimits()
        self.active_streams = 0
        """Streams open right now (one per connected node proxy, more during a restart)."""

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register on a grpc.aio server (the caller owns its ports and credentials)."""
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "only delta xDS (DeltaAggregatedResources) is served"
        )

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        snapshot = self._source.snapshot()
        stream = DeltaServerStream({ADDRESS_TYPE_URL: snapshot}, self._limits)
        peer = context.peer()
        violation = None
        self.active_streams += 1
        try:
            await self._serve(stream, snapshot.generation, request_iterator, context)
        except* RemoteProtocolError as group:
            violation = str(group.exceptions[0])
        finally:
            self.active_streams -= 1
            log.info("xDS stream from %s (%s) ended", peer, stream.node_id or "no node id")
        if violation is not None:
            log.warning(
                "xDS stream from %s (%s) broke the protocol: %s", peer, stream.node_id, violation
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, violation)

    async def _serve(
        self,
        stream: DeltaServerStream,
        generation: int,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Send what the stream has to say whenever a request or a change woke it up; return
        when the client half-closes."""
        wake = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(self._read(stream, requests, context, wake))
            follower = tg.create_task(self._follow(stream, generation, wake))
            try:
                while not reader.done():
                    await wake.wait()
                    wake.clear()
                    for resp in stream.responses_to_send():
                        await context.write(response_to_proto(resp))
            finally:
                follower.cancel()
                reader.cancel()

    async def _read(
        self,
        stream: DeltaServerStream,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        wake: asyncio.Event,
    ) -> None:
        try:
            async for msg in requests:
                for event in stream.request_received(request_from_proto(msg)):
                    _log_event(context.peer(), stream.node_id, event)
                wake.set()
        finally:
            wake.set()

    async def _follow(
        self, stream: DeltaServerStream, generation: int, wake: asyncio.Event
    ) -> None:
        while True:
            snapshot = await self._source.wait_changed(generation)
            generation = snapshot.generation
            stream.resources_changed(ADDRESS_TYPE_URL, snapshot)
            wake.set()


def _log_event(peer: str, node_id: str, event: ServerEvent) -> None:
    match event:
        case Subscribed(type_url=t, wildcard=w, names=n, known=k):
            log.info(
                "xDS %s (%s) subscribed to %s: wildcard=%s, %d names, has %d",
                peer, node_id, t, w, len(n), k,
            )
        case Nacked(type_url=t, nonce=nonce, error=error):
            log.warning("xDS %s (%s) rejected %s response %s: %s", peer, node_id, t, nonce, error)
        case Acked(type_url=t, nonce=nonce):
            log.debug("xDS %s (%s) acked %s response %s", peer, node_id, t, nonce)
        case StaleNonce(type_url=t, nonce=nonce):
            log.debug("xDS %s (%s) answered stale %s nonce %s", peer, node_id, t, nonce)
