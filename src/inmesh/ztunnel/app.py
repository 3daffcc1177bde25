"""The ztunnel process: ZDS client + workload manager + admin servers, and the shutdown sequence.

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
from inmesh.ztunnel.manager import WorkloadManager
from inmesh.ztunnel.metrics import ZtunnelMetrics
from inmesh.ztunnel.proxy import PodProxy
from inmesh.ztunnel.settings import ZtunnelSettings

log = logging.getLogger(__name__)


class _View:
    """What the admin endpoints show: readiness, the config dump, the metrics."""

    def __init__(self, settings: ZtunnelSettings, manager: WorkloadManager,
                 metrics: ZtunnelMetrics) -> None:
        self._settings, self._manager, self._metrics = settings, manager, metrics

    def readiness_blockers(self) -> list[str]:
        return self._manager.readiness_blockers()

    def config_dump(self) -> dict[str, Any]:
        return {"node": self._settings.node_name, "workloadState": self._manager.dump()}

    def metrics(self) -> tuple[bytes, str]:
        return self._metrics.render(), self._metrics.content_type


async def serve(settings: ZtunnelSettings, stop: asyncio.Event | None = None) -> int:
    """Run ztunnel until SIGTERM/SIGINT (or ``stop`` is set); return the exit status."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = ZtunnelMetrics()

    def new_proxy(uid: str, info: WorkloadInfo, netns_fd: int) -> PodProxy:
        return PodProxy(uid, info, netns_fd, settings.proxy, metrics)

    manager = WorkloadManager(new_proxy, retry_interval=settings.retry_interval, metrics=metrics)
    admin = AdminServers(settings, _View(settings, manager, metrics))
    admin.start()
    zds = loop.create_task(ZdsClient(settings.zds_socket, manager).run(), name="zds-client")
    stopped = loop.create_task(stop.wait(), name="stop-signal")
    log.info("ztunnel for node %s started (ZDS %s)", settings.node_name, settings.zds_socket)
    try:
        await asyncio.wait({zds, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    status = 0
    if zds.done():
        log.error("ZDS client ended unexpectedly (%r); draining at once", _outcome(zds))
        status = 1
    zds.cancel()
    stopped.cancel()
    await asyncio.gather(zds, stopped, return_exceptions=True)
    await admin.close()
    deadline = None if status else loop.time() + settings.drain_deadline
    log.info("ztunnel draining (deadline %.1f s)", settings.drain_deadline if status == 0 else 0)
    await manager.shutdown(deadline)
    log.info("ztunnel stopped")
    return status


def _outcome(task: asyncio.Task[None]) -> object:
    return "cancelled" if task.cancelled() else task.exception()


def run(settings: ZtunnelSettings) -> int:
    """Run ztunnel on a uvloop event loop in the calling thread; return the exit status."""
    return int(uvloop.run(serve(settings)))
