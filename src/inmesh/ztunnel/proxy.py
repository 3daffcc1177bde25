"""The proxy of one pod: three listeners inside the pod's netns and the connections they accept.

Outbound (15001): with a `Mesh`, a connection to a workload that takes HBONE is tunnelled
(`inmesh.ztunnel.tunnels`); anything else is relayed to its original destination from a marked
socket in the pod netns (source = the pod IP). Inbound plaintext (15006): relayed to the
original destination from the client's own IP (transparent), so the app sees its real peer.
Inbound HBONE (15008): served with the pod's certificate when there is a `Mesh`; without one
the port is only reserved and each connection is reset at once, so a peer fails fast.

A failed connection closes only itself. `drain` closes the listeners at once and the live
connections at a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from inmesh.constants import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT
from inmesh.errors import KernelError
from inmesh.sockio import connect
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.addressing import Endpoint, endpoint_of, inbound_refusal, outbound_refusal
from inmesh.ztunnel.mesh import Mesh
from inmesh.ztunnel.metrics import PeerLabels, TrafficLabels, ZtunnelMetrics, connection_labels
from inmesh.ztunnel.offload import InboundWorkers
from inmesh.ztunnel.relay import Relay, reset_close
from inmesh.ztunnel.routing import HboneRoute
from inmesh.ztunnel.settings import ProxySettings
from inmesh.ztunnel.sockets import PodSockets, original_dst, tune_stream
from inmesh.ztunnel.tunnels import PodTunnels

log = logging.getLogger(__name__)

LISTEN_PORTS = (OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT)
_ACCEPT_PAUSE = 0.1  # seconds a listener rests after EMFILE & co., instead of spinning

Handler = Callable[[socket.socket, Any], Coroutine[Any, Any, None]]


class PodProxy:
    """Listeners and live connections of one pod. ``netns_fd`` is borrowed during `start`.
    ``mesh`` None: plaintext only (outbound passthrough, 15008 reset)."""

    def __init__(self, uid: str, info: WorkloadInfo, netns_fd: int, settings: ProxySettings,
                 metrics: ZtunnelMetrics, mesh: Mesh | None = None,
                 offload: InboundWorkers | None = None) -> None:
        self.uid = uid
        self.info = info
        self.label = f"{info.namespace}/{info.name}"
        self._netns_fd = netns_fd
        self._settings = settings
        self._metrics = metrics
        self._mesh = mesh
        self._offload = offload if mesh is not None else None
        self._hbone_listener: socket.socket | None = None
        self._hbone_local = True  # ztunnel accepts on 15008 itself (no worker has it)
        self._sockets: PodSockets | None = None
        self._tunnels: PodTunnels | None = None
        self._listeners: dict[socket.socket, Handler] = {}
        self._conns: set[asyncio.Task[None]] = set()
        self._drained = False

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        """Enter the pod netns and listen on 15001/15006/15008; `KernelError` if impossible."""
        self._sockets = PodSockets(self._netns_fd, self._settings, self.label)
        try:
            socks = await self._sockets.listeners(LISTEN_PORTS)
        except BaseException:
            self._sockets.close()
            raise
        offload = self._offload
        if self._mesh is not None:
            self._tunnels = PodTunnels(
                self.label, self.info, self._mesh, self._sockets, self._settings, self._metrics,
                None if offload is None else lambda: offload.inbound_streams(self.uid))
            self._mesh.register_debug(self.uid, self._tunnels.dump)
        loop = asyncio.get_running_loop()
        handlers = (self._outbound, self._inbound, self._hbone)
        for sock, handler in zip(socks, handlers, strict=True):
            self._listeners[sock] = handler
            loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        self._hbone_listener = socks[2]
        if offload is not None:
            offload.offer(self.uid, self.info, socks[2], self._netns_fd, self._serve_hbone_here)
        log.info("pod %s (uid %s): proxy listening on %s", self.label, self.uid, LISTEN_PORTS)

    async def drain(self, deadline: float | None) -> None:
        """Stop accepting now; let live connections finish until ``deadline`` (event loop time,
        `loop.time()`), then force-close (reset) the rest. ``None`` resets them at once."""
        if self._drained:
            return
        self._drained = True
        withdrawn = None
        if self._offload is not None:
            withdrawn = asyncio.get_running_loop().create_task(
                self._offload.withdraw(self.uid, deadline))
        self._close_listeners(accept_queued=deadline is not None)
        if self._tunnels is not None:
            self._tunnels.start_drain()  # HBONE peers move new tunnels elsewhere (GOAWAY)
        pending = set(self._conns)
        if pending and deadline is not None:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if withdrawn is not None:
            await withdrawn
        if self._tunnels is not None:
            await self._tunnels.close()
            assert self._mesh is not None
            self._mesh.register_debug(self.uid, None)
        if self._sockets is not None:
            self._sockets.close()
        log.info("pod %s (uid %s): proxy drained", self.label, self.uid)

    # -- accepting -----------------------------------------------------------------------

    def _serve_hbone_here(self, local: bool) -> None:
        """Whether ztunnel accepts on 15008 itself (no inbound worker has the pod)."""
        listener = self._hbone_listener
        if local == self._hbone_local or listener is None or listener not in self._listeners:
            self._hbone_local = local
            return
        self._hbone_local = local
        loop = asyncio.get_running_loop()
        if local:
            loop.add_reader(listener.fileno(), self._on_acceptable, listener)
        else:
            loop.remove_reader(listener.fileno())
            if self._tunnels is not None:  # the pooled tunnel connections move to the worker
                self._tunnels.hand_back_inbound()

    def _on_acceptable(self, listener: socket.socket) -> None:
        handler = self._listeners[listener]
        for _ in range(self._settings.accept_batch):
            try:
                conn, peer = listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENOBUFS...: rest instead of spinning on the fd
                log.warning("pod %s: accept failed: %s", self.label, exc.strerror)
                self._pause(listener)
                return
            self._spawn(handler, conn, peer)

    def _pause(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if listener in self._listeners and (listener is not self._hbone_listener
                                                or self._hbone_local):
                loop.add_reader(listener.fileno(), self._on_acceptable, listener)

        loop.call_later(_ACCEPT_PAUSE, resume)

    def _spawn(self, handler: Handler, conn: socket.socket, peer: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(handler, conn, peer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _guarded(self, handler: Handler, conn: socket.socket, peer: Any) -> None:
        """Run one connection's handler; a bug there closes that connection, nothing else."""
        try:
            await handler(conn, peer)
        except Exception:
            log.exception("pod %s: connection from %s failed", self.label, peer)
            reset_close(conn)  # a no-op if the relay already closed it

    def _close_listeners(self, accept_queued: bool) -> None:
        """Close every listener. With ``accept_queued``, first take the connections already in
        the accept queue: closing a listener would reset them, although the kernel completed
        their handshake (with SO_REUSEPORT a successor takes the new ones)."""
        loop = asyncio.get_running_loop()
        for listener, handler in list(self._listeners.items()):
            loop.remove_reader(listener.fileno())
            while accept_queued:
                try:
                    conn, peer = listener.accept()
                except BlockingIOError:
                    break
                except OSError:
                    continue
                self._spawn(handler, conn, peer)
            listener.close()
        self._listeners.clear()

    # -- connection handlers -------------------------------------------------------------

    async def _outbound(self, client: socket.socket, peer: Any) -> None:
        dst = original_dst(client)
        refusal = outbound_refusal(dst)
        destination = PeerLabels()
        if self._mesh is not None and refusal is None:
            route = self._mesh.route(dst)
            if isinstance(route, HboneRoute):
                assert self._tunnels is not None  # made in start, with the listeners
                await self._tunnels.outbound(client, route)
                return
            destination = PeerLabels.of_entry(route.destination)
        labels = connection_labels("source", PeerLabels(self.info.name, self.info.namespace),
                                   destination, dst.ip, mutual_tls=False)
        await self._serve(client, dst, None, refusal, labels)

    async def _inbound(self, client: socket.socket, peer: Any) -> None:
        dst = original_dst(client)
        labels = TrafficLabels(
            reporter="destination",
            destination_workload=self.info.name,
            destination_workload_namespace=self.info.namespace,
            destination_service=dst.ip,
        )
        await self._serve(client, dst, endpoint_of(peer).ip, inbound_refusal(dst), labels)

    async def _hbone(self, client: socket.socket, peer: Any) -> None:
        if self._tunnels is None:
            log.debug("pod %s: HBONE from %s refused: no mesh configured", self.label, peer)
            reset_close(client)
            return
        await self._tunnels.inbound(client)

    async def _serve(self, client: socket.socket, dst: Endpoint, src_ip: str | None,
                     refusal: str | None, labels: TrafficLabels) -> None:
        """Connect upstream (from ``src_ip`` if given) and relay; never raises but cancellation."""
        if refusal is not None:
            log.info("pod %s: refused connection to %s: %s", self.label, dst, refusal)
            reset_close(client)
            return
        try:
            upstream = await self._connect(client, dst, src_ip)
        except (OSError, KernelError) as exc:
            log.info("pod %s: connect to %s failed: %s", self.label, dst, exc)
            self._metrics.failed(replace(labels, response_flags="CONNECT"))
            reset_close(client)
            return
        except BaseException:
            reset_close(client)
            raise
        try:
            relay = Relay(client, upstream, self._settings.pipe_size)  # owns both from here
        except OSError as exc:  # no pipes left (EMFILE): both sockets were reset
            log.warning("pod %s: cannot relay to %s: %s", self.label, dst, exc.strerror)
            self._metrics.failed(labels)
            return
        self._metrics.opened(labels)
        try:
            result = await relay.run()
            log.debug("pod %s: %s done: %s", self.label, dst, result)
        finally:
            self._metrics.closed(labels, received=relay.a_to_b, sent=relay.b_to_a)

    async def _connect(self, client: socket.socket, dst: Endpoint,
                       src_ip: str | None) -> socket.socket:
        assert self._sockets is not None  # started before any listener exists
        tune_stream(client, self._settings)
        if src_ip is None:
            upstream = await self._sockets.upstream(dst)
        else:
            upstream = await self._sockets.transparent_upstream(src_ip, dst)
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                await connect(upstream, (dst.ip, dst.port))
        except BaseException:
            upstream.close()
            raise
        return upstream

