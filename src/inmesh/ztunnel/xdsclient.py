"""The node proxy's delta xDS client: keeps a `WorkloadTable` in step with the control plane.

One `DeltaAggregatedResources` stream at a time, wildcard-subscribed to Istio's Address type.
Every response is applied to the table and ACKed, or NACKed whole if any resource in it is
unusable (the table is then unchanged). On any stream or connection failure it reconnects
with exponential back-off and re-subscribes with `initial_resource_versions`, so the control
plane sends only what changed; the table keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from inmesh.errors import ConfigError, RemoteProtocolError
from inmesh.xds.delta import DeltaClient
from inmesh.xds.messages import DeltaRequest, request_to_proto, response_from_proto
from inmesh.xds.resources import ADDRESS_TYPE_URL
from inmesh.ztunnel.workloads import WorkloadTable

__all__ = ["ChannelFactory", "XdsClient", "XdsClientSettings"]

log = logging.getLogger(__name__)

ChannelFactory = Callable[[], grpc.aio.Channel]
"""Makes a fresh channel to the control plane (credentials, target override, keepalive are
its business); called once per connection attempt, and the client closes what it returns."""


@dataclass(frozen=True)
class XdsClientSettings:
    initial_backoff: float = 0.01
    """Seconds before reconnecting after a failure (Istio's ztunnel: 10 ms): a stream that ends
    is usually a control-plane restart or a connection-age limit."""

    max_backoff: float = 15.0
    """Cap, in seconds, of the doubling reconnect delay (ztunnel's value): bounds how stale the
    table gets after a long control-plane outage, without hammering it meanwhile."""

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ConfigError(
                f"xDS back-off must satisfy 0 < initial ({self.initial_backoff}) <= max"
                f" ({self.max_backoff}) seconds"
            )


class XdsClient:
    """Subscribes `node_id` to the Address type and applies what comes to `table`."""

    def __init__(
        self,
        channel_factory: ChannelFactory,
        node_id: str,
        table: WorkloadTable,
        settings: XdsClientSettings | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._factory = channel_factory
        self._table = table
        self._settings = settings or XdsClientSettings()
        self._metadata = tuple(metadata)
        self._delta = DeltaClient(node_id, [ADDRESS_TYPE_URL])
        self._synced = asyncio.Event()
        self.connected = False
        """A stream is up and has delivered at least one response."""
        self.nacks = 0
        """Responses rejected so far (each one is logged with its reason)."""

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Return once a first full state has been applied (it stays applied across
        reconnects, so this never goes back to waiting)."""
        await self._synced.wait()

    async def run(self) -> None:
        """Stream, reconnect with back-off, forever; returns only by cancellation.

        The back-off resets after a stream that delivered a response, and grows while
        connection attempts fail or streams end before delivering anything."""
        backoff = self._settings.initial_backoff
        while True:
            if await self._stream_once():
                backoff = self._settings.initial_backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.max_backoff)

    async def _stream_once(self) -> bool:
        """One stream; True if it delivered at least one response."""
        delivered = False
        try:
            channel = self._factory()
        except OSError as exc:
            log.warning("xDS: cannot set up the control-plane channel: %s", exc)
            return False
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources(metadata=self._metadata or None)
            try:
                for req in self._delta.initial_requests():
                    await call.write(request_to_proto(req))
                while (msg := await call.read()) is not grpc.aio.EOF:
                    delivered = self.connected = True
                    await call.write(request_to_proto(self._handle(msg)))
                log.info("xDS stream closed by the control plane")
            except grpc.aio.AioRpcError as exc:
                log.info("xDS stream failed: %s %s", exc.code(), exc.details())
            except asyncio.InvalidStateError as exc:
                log.info("xDS stream ended while we were writing: %s", exc)
            finally:
                call.cancel()
        finally:
            self.connected = False
            await channel.close()
        return delivered

    def _handle(self, msg: Any) -> DeltaRequest:
        """Apply one response to the table; the ACK or NACK to send back."""
        try:
            update = self._delta.response_received(response_from_proto(msg))
            added = {name: r.body for name, r in update.added.items()}
            self._table.apply(added, update.removed)
        except RemoteProtocolError as exc:
            self.nacks += 1
            log.warning("xDS: rejecting %s response %s: %s", msg.type_url, msg.nonce, exc)
            return self._delta.nack(msg.type_url, msg.nonce, str(exc))
        log.debug("xDS: applied %r", update)
        ack = self._delta.ack(update)
        if self._delta.synced:
            self._synced.set()
        return ack
