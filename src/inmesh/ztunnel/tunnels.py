"""HBONE for one pod: its outbound tunnels (pooled, with the pod's certificate) and its inbound
15008 connections (served with the pod's certificate, delivered from the client pod's IP).

Outbound: the TLS socket is made in the pod netns and marked (its source is the pod IP); the
server must present the destination workload's SPIFFE ID; CONNECT carries ``forwarded``,
``baggage`` and ``traceparent``. Inbound: the client must present a mesh certificate of the same
trust domain; a CONNECT must target the IP the client connected to (this pod) and a legal port;
upstream = a transparent connect from the client pod's IP. A failure closes only its own
app connection (reset) or stream (status), counted with a response flag.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from inmesh.errors import InmeshError
from inmesh.hbone import (
    ConnectRequest,
    HbonePool,
    HboneStream,
    PoolKey,
    RelayCounts,
    StreamDone,
    Target,
    UpstreamRefused,
    forwarded,
    relay_socket_stream,
    serve_hbone,
    traceparent,
)
from inmesh.identity import SpiffeId
from inmesh.sockio import connect
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.addressing import Endpoint, endpoint_of
from inmesh.ztunnel.mesh import Mesh
from inmesh.ztunnel.metrics import (
    PeerLabels,
    TrafficCounter,
    TrafficLabels,
    connection_labels,
)
from inmesh.ztunnel.relay import reset_close
from inmesh.ztunnel.routing import HboneRoute, failure_flag, source_baggage
from inmesh.ztunnel.settings import ProxySettings
from inmesh.ztunnel.sockets import tune_stream

log = logging.getLogger(__name__)

__all__ = ["PodTunnels", "TunnelSockets"]


class TunnelSockets(Protocol):
    """Where tunnel sockets come from: `PodSockets` (inside the pod netns, marked)."""

    async def upstream(self, dst: Endpoint) -> socket.socket:
        """A socket for ``dst`` whose source is the pod (the pool connects it if need be)."""
        ...

    async def transparent_upstream(self, src_ip: str, dst: Endpoint) -> socket.socket:
        """An unconnected socket for ``dst`` whose source will be ``src_ip``."""
        ...


class PodTunnels:
    """The HBONE side of one pod's proxy. `close` ends its pooled outbound connections."""

    def __init__(self, label: str, info: WorkloadInfo, mesh: Mesh, sockets: TunnelSockets,
                 settings: ProxySettings, metrics: TrafficCounter,
                 inbound_elsewhere: Callable[[], int] | None = None) -> None:
        self._label, self._info, self._mesh = label, info, mesh
        self._sockets, self._settings, self._metrics = sockets, settings, metrics
        self.pool = HbonePool(mesh.hbone)
        self._opened: dict[ConnectRequest, TrafficLabels] = {}
        self._inbound_elsewhere = inbound_elsewhere
        """Inbound streams this pod's workers serve (`inmesh.ztunnel.offload`), for the dump."""
        self._draining: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start_drain(self) -> None:
        """The pod's proxy is leaving: every inbound HBONE connection, and any accepted from
        now on, sends GOAWAY, so peers open new tunnels elsewhere (a successor ztunnel) while
        these finish."""
        if not self._draining.done():
            self._draining.set_result(None)

    def hand_back_inbound(self) -> None:
        """The pod's inbound worker is back: GOAWAY on the HBONE connections accepted here
        meanwhile, so peers dial again and land on the worker; their tunnels finish here.
        Later connections are served as usual (a no-op once `start_drain` was called)."""
        if self._draining.done():
            return
        served, self._draining = self._draining, asyncio.get_running_loop().create_future()
        served.set_result(None)

    async def close(self) -> None:
        await self.pool.close()

    def dump(self) -> dict[str, Any]:
        return {"dials": self.pool.dials, "connections": self.pool.connections(),
                "refusedRetries": self.pool.retries,
                "inboundStreams": len(self._opened) + (
                    self._inbound_elsewhere() if self._inbound_elsewhere is not None else 0)}

    # -- outbound --------------------------------------------------------------------------

    async def outbound(self, client: socket.socket, route: HboneRoute) -> None:
        """Tunnel the app's connection ``client`` along ``route``; owns ``client``."""
        labels = connection_labels(
            "source", PeerLabels(self._info.name, self._info.namespace),
            PeerLabels.of_entry(route.destination, route.identity.uri),
            route.authority.ip, mutual_tls=True)
        try:
            app = endpoint_of(client.getpeername())  # ENOTCONN if the app already gave up
            tune_stream(client, self._settings)
            source = self._mesh.identity_of(self._info)
            labels = replace(labels, source_principal=source.uri)
            async with asyncio.timeout(self._settings.connect_timeout):
                stream = await self._open(source, app, route)
        except (InmeshError, OSError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
            flag = failure_flag(exc)
            log.info("pod %s: HBONE to %s (%s) failed [%s]: %s", self._label, route.authority,
                     route.identity, flag, exc or "timed out")
            self._metrics.failed(replace(labels, response_flags=flag))
            reset_close(client)
            return
        except BaseException:
            reset_close(client)
            raise
        self._metrics.opened(labels)
        counts = RelayCounts(0, 0)
        try:
            counts = await relay_socket_stream(client, stream, self._mesh.hbone.relay_chunk)
            log.debug("pod %s: HBONE %s done: %s", self._label, route.authority, counts)
        finally:
            self._metrics.closed(labels, received=counts.to_stream, sent=counts.from_stream)

    async def _open(self, source: SpiffeId, app: Endpoint, route: HboneRoute) -> HboneStream:
        ctx = await self._mesh.client_context(source)
        key = PoolKey(source, route.identity, app.ip, route.address)
        address = Endpoint(route.address.ip, route.address.port)
        headers = [forwarded(Target(app.ip, app.port)),
                   source_baggage(self._info, self._mesh.local(self._info)), traceparent()]
        return await self.pool.open(key, lambda: self._sockets.upstream(address), ctx,
                                    [route.identity], route.authority, headers)

    # -- inbound ---------------------------------------------------------------------------

    async def inbound(self, sock: socket.socket) -> None:
        """Serve one connection accepted on 15008 until it ends; owns ``sock``."""
        try:
            local = endpoint_of(sock.getsockname())
            tune_stream(sock, self._settings)
            own = self._mesh.identity_of(self._info)
            ctx = await self._mesh.server_context(own)
        except (InmeshError, OSError) as exc:
            log.info("pod %s: cannot serve HBONE: %s", self._label, exc)
            self._metrics.failed(TrafficLabels(
                reporter="destination", destination_workload=self._info.name,
                destination_workload_namespace=self._info.namespace,
                response_flags=failure_flag(exc)))
            reset_close(sock)
            return
        except BaseException:
            reset_close(sock)
            raise
        await serve_hbone(sock, ctx, [local.ip], own.trust_domain,
                          lambda request: self._upstream(own, request), self._stream_done,
                          self._mesh.hbone, self._draining)

    async def _upstream(self, own: SpiffeId, request: ConnectRequest) -> socket.socket:
        """The app's side of a tunnel, connected from the client pod's IP (transparent)."""
        source = PeerLabels.of_entry(self._mesh.table.by_ip(request.peer_addr.ip),
                                     request.peer_identity.uri)
        labels = connection_labels(
            "destination", source,
            PeerLabels(self._info.name, self._info.namespace, own.uri),
            request.target.ip, mutual_tls=True)
        target = Endpoint(request.target.ip, request.target.port)
        try:
            upstream = await self._sockets.transparent_upstream(request.peer_addr.ip, target)
            try:
                async with asyncio.timeout(self._settings.connect_timeout):
                    await connect(upstream, (target.ip, target.port))
            except BaseException:
                upstream.close()
                raise
        except (InmeshError, OSError) as exc:
            self._metrics.failed(replace(labels, response_flags="CONNECT"))
            raise UpstreamRefused(f"pod {self._label}: connect to {target}: "
                                  f"{exc or 'timed out'}", 503) from exc
        self._opened[request] = labels
        self._metrics.opened(labels)
        return upstream

    def _stream_done(self, done: StreamDone) -> None:
        labels = self._opened.pop(done.request, None)
        if labels is not None:
            self._metrics.closed(labels, received=done.from_peer, sent=done.to_peer)
