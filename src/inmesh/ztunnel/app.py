"""The ztunnel process: ZDS client + workload manager + admin servers, and the shutdown sequence.

With a control plane (`MeshSettings`): xDS is streamed and its first state applied BEFORE the
ZDS connection is made, so no pod is served before the proxy knows the mesh (otherwise a
connection to a mesh pod would leave in plaintext); the certificates of the served pods'
identities are fetched as pods come and go; readiness also waits for xDS.

SIGTERM/SIGINT: stop reading ZDS, close the admin listeners (a successor ztunnel may need their
ports), close every in-pod listener at once (a successor bound with SO_REUSEPORT takes new
connections), let live connections finish until the drain deadline, then reset the rest and
exit 0. The ZDS client only ends by a bug; the process then drains immediately and exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import uvloop

from inmesh.zds.client import ZdsClient
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.admin import AdminServers
from inmesh.ztunnel.malloc import keep_buffers_on_heap
from inmesh.ztunnel.manager import WorkloadManager
from inmesh.ztunnel.meshlink import MeshLink
from inmesh.ztunnel.metrics import ZtunnelMetrics
from inmesh.ztunnel.offload import InboundWorkers
from inmesh.ztunnel.proxy import PodProxy
from inmesh.ztunnel.settings import ZtunnelSettings

log = logging.getLogger(__name__)


class _View:
    """What the admin endpoints show: readiness, the config dump, the metrics."""

    def __init__(self, settings: ZtunnelSettings, manager: WorkloadManager,
                 metrics: ZtunnelMetrics, link: MeshLink | None) -> None:
        self._settings, self._manager, self._metrics = settings, manager, metrics
        self._link = link

    def readiness_blockers(self) -> list[str]:
        mesh = self._link.readiness_blockers() if self._link is not None else []
        return mesh + self._manager.readiness_blockers()

    def config_dump(self) -> dict[str, Any]:
        state = self._manager.dump()
        dump: dict[str, Any] = {"node": self._settings.node_name, "workloadState": state}
        if self._link is not None:
            infos = self._manager.infos()
            for uid, entry in state.items():
                entry.update(self._link.mesh.pod_dump(uid, infos[uid]))
            dump["mesh"] = self._link.dump()
        return dump

    def metrics(self) -> tuple[bytes, str]:
        return self._metrics.render(), self._metrics.content_type


async def serve(settings: ZtunnelSettings, stop: asyncio.Event | None = None) -> int:
    """Run ztunnel until SIGTERM/SIGINT (or ``stop`` is set); return the exit status.
    `ConfigError` before anything starts if the node credential dir is unusable."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    metrics = ZtunnelMetrics()
    link = MeshLink(settings.mesh, settings.node_name) if settings.mesh is not None else None
    mesh = link.mesh if link is not None else None

    offload: InboundWorkers | None = None
    if link is not None and settings.mesh is not None and settings.inbound_workers:
        offload = InboundWorkers(
            settings.inbound_workers, node=settings.node_name,
            trust_domain=settings.mesh.trust_domain, proxy=settings.proxy,
            hbone=settings.mesh.hbone, metrics=metrics, resources=link.table.resources,
            certificates=link.certs.bundles)
        link.table.add_apply_listener(offload.xds_applied)
        link.certs.add_watcher(offload.cert_changed)

    def new_proxy(uid: str, info: WorkloadInfo, netns_fd: int) -> PodProxy:
        return PodProxy(uid, info, netns_fd, settings.proxy, metrics, mesh, offload)

    def served_changed() -> None:
        if mesh is not None:
            mesh.want(manager.infos().values())

    manager = WorkloadManager(new_proxy, retry_interval=settings.retry_interval, metrics=metrics,
                              on_change=served_changed)
    admin = AdminServers(settings, _View(settings, manager, metrics, link))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopped = loop.create_task(stop.wait(), name="stop-signal")
    zds: asyncio.Task[None] | None = None
    try:
        admin.start()
        if link is None or await _synced(link, stopped):
            if link is not None:
                link.table.add_listener(served_changed)  # a pod's trust domain may change
            if offload is not None:
                offload.start()
            zds = loop.create_task(ZdsClient(settings.zds_socket, manager).run(),
                                   name="zds-client")
            log.info("ztunnel for node %s started (ZDS %s)", settings.node_name,
                     settings.zds_socket)
            await asyncio.wait({zds, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)
    status = await _shutdown(settings, zds, admin, manager)
    if offload is not None:
        await offload.close()
    if link is not None:
        await link.close()
    log.info("ztunnel stopped")
    return status


async def _synced(link: MeshLink, stopped: asyncio.Task[bool]) -> bool:
    """Start xDS and wait for its first state (True), or for the stop signal (False)."""
    link.start()
    log.info("waiting for the first xDS state from %s before serving pods", link.target)
    synced = asyncio.get_running_loop().create_task(link.wait_synced(), name="xds-synced")
    await asyncio.wait({synced, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if synced.done():
        log.info("xDS synced: %d workloads known", len(link.table))
        return True
    synced.cancel()
    await asyncio.gather(synced, return_exceptions=True)
    log.info("stopped before the first xDS state arrived")
    return False


async def _shutdown(settings: ZtunnelSettings, zds: asyncio.Task[None] | None,
                    admin: AdminServers, manager: WorkloadManager) -> int:
    """Stop ZDS, free the admin ports, drain every proxy; the exit status."""
    status = 0
    if zds is not None:
        if zds.done():
            log.error("ZDS client ended unexpectedly (%r); draining at once", _outcome(zds))
            status = 1
        zds.cancel()
        await asyncio.gather(zds, return_exceptions=True)
    await admin.close()
    drain = settings.drain_deadline if status == 0 else 0.0
    log.info("ztunnel draining (deadline %.1f s)", drain)
    await manager.shutdown(asyncio.get_running_loop().time() + drain if status == 0 else None)
    return status


def _outcome(task: asyncio.Task[None]) -> object:
    return "cancelled" if task.cancelled() else task.exception()


def run(settings: ZtunnelSettings) -> int:
    """Run ztunnel on a uvloop event loop in the calling thread; return the exit status."""
    keep_buffers_on_heap()
    return int(uvloop.run(serve(settings)))
