"""Which pods have a proxy: the ZDS workload handler of ztunnel (Istio's workload proxy manager).

Per pod UID a workload is Pending (its proxy failed to start; retried in the background),
Up, or Draining. Add is idempotent by netns identity; Del and snapshot reconcile drain at once;
`shutdown` drains everything gracefully. Ready = ZDS connected, snapshot received, nothing
pending. The manager owns each workload's netns fd until the workload is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from inmesh.errors import InmeshError, KernelError, LocalProtocolError
from inmesh.netns import NetnsId, netns_id_of_fd
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.metrics import ZtunnelMetrics

log = logging.getLogger(__name__)


class Proxy(Protocol):
    """What the manager needs from a pod proxy (`PodProxy`, or a fake in tests)."""

    async def start(self) -> None: ...

    async def drain(self, deadline: float | None) -> None: ...


ProxyFactory = Callable[[str, WorkloadInfo, int], Proxy]
"""Builds an unstarted proxy from (uid, info, netns fd); the fd is only borrowed."""


class WorkloadState(enum.Enum):
    PENDING = "Pending"
    UP = "Up"
    DRAINING = "Draining"
    GONE = "Gone"
    """Removed from the manager; the netns fd is closed."""


_TRANSITIONS = frozenset({
    (WorkloadState.PENDING, WorkloadState.UP),  # a start (first or retried) succeeded
    (WorkloadState.PENDING, WorkloadState.GONE),  # deleted before it ever started
    (WorkloadState.UP, WorkloadState.DRAINING),
    (WorkloadState.DRAINING, WorkloadState.GONE),
})


@dataclass(eq=False)
class _Workload:
    uid: str
    info: WorkloadInfo
    netns_fd: int
    netns: NetnsId
    state: WorkloadState = WorkloadState.PENDING
    proxy: Proxy | None = None
    error: str | None = None
    retry: asyncio.Task[None] | None = field(default=None, repr=False)

    def move(self, to: WorkloadState) -> None:
        if (self.state, to) not in _TRANSITIONS:
            raise LocalProtocolError(f"workload {self.uid}: illegal move {self.state} -> {to}")
        self.state = to

    @property
    def label(self) -> str:
        return f"{self.info.namespace}/{self.info.name}"


class WorkloadManager:
    """Implements the ZDS `WorkloadHandler` protocol on top of a proxy factory."""

    def __init__(self, factory: ProxyFactory, *, retry_interval: float = 5.0,
                 metrics: ZtunnelMetrics | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        """``on_change`` is called (synchronously) whenever the set of workloads changed."""
        self._factory = factory
        self._on_change = on_change
        self._retry_interval = retry_interval
        self._metrics = metrics
        self._workloads: dict[str, _Workload] = {}
        self._lock = asyncio.Lock()
        self._retries: set[asyncio.Task[None]] = set()
        self._connected = False
        self._snapshot_received = False
        self._closing = False

    # -- WorkloadHandler -----------------------------------------------------------------

    async def add_workload(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        """Start the pod's proxy; a no-op for the same netns. `InmeshError` = NACK (pending)."""
        try:
            netns = netns_id_of_fd(netns_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(netns_fd)
            raise KernelError(f"pod {uid}: bad netns fd: {exc.strerror}", errno_=exc.errno) from exc
        try:
            await self._add(uid, info, netns_fd, netns)
        finally:
            self._changed()

    async def _add(self, uid: str, info: WorkloadInfo, netns_fd: int, netns: NetnsId) -> None:
        async with self._lock:
            if self._closing:
                os.close(netns_fd)
                raise InmeshError(f"pod {uid}: ztunnel is shutting down")
            current = self._workloads.get(uid)
            if current is not None and current.netns == netns:
                os.close(netns_fd)
                if current.state is WorkloadState.PENDING:
                    await self._start_or_raise(current)
                return
            if current is not None:
                log.info("pod %s (uid %s): netns changed to %s", current.label, uid, netns)
                await self._remove(current, deadline=None)
            workload = _Workload(uid, info, netns_fd, netns)
            self._workloads[uid] = workload
            await self._start_or_raise(workload)

    async def del_workload(self, uid: str) -> None:
        """Drain the pod's proxy immediately (its processes are gone); unknown UIDs are fine."""
        async with self._lock:
            if (workload := self._workloads.get(uid)) is not None:
                await self._remove(workload, deadline=None)
        self._changed()

    async def snapshot_done(self, keep: frozenset[str]) -> None:
        """Drain every workload the agent's snapshot did not name; then we may become ready."""
        async with self._lock:
            for uid, workload in list(self._workloads.items()):
                if uid not in keep:
                    await self._remove(workload, deadline=None)
            self._snapshot_received = True
        self._changed()

    def connection_changed(self, connected: bool) -> None:
        self._connected = connected
        if not connected:
            self._snapshot_received = False  # a new connection brings a new snapshot

    # -- process lifecycle ----------------------------------------------------------------

    async def shutdown(self, deadline: float | None) -> None:
        """Refuse new workloads, stop retries, drain every proxy (gracefully until
        ``deadline``, event loop time) and close every netns fd."""
        self._closing = True
        async with self._lock:
            # With the lock held, every retry is asleep or waiting for the lock: safe to cancel.
            retries = list(self._retries)
            for task in retries:
                task.cancel()
            workloads = list(self._workloads.values())
            await asyncio.gather(*(self._remove(w, deadline) for w in workloads))
        await asyncio.gather(*retries, return_exceptions=True)
        self._changed()

    # -- observation ----------------------------------------------------------------------

    def readiness_blockers(self) -> list[str]:
        """Why ztunnel is not ready; empty when it is."""
        blockers: list[str] = []
        if not self._connected:
            blockers.append("zds connection")
        elif not self._snapshot_received:
            blockers.append("zds snapshot")
        blockers.extend(f"workload {w.uid} ({w.label})" for w in self._pending())
        return blockers

    @property
    def retries_running(self) -> int:
        """Background start retries still alive (sleeping or attempting)."""
        return len(self._retries)

    def infos(self) -> dict[str, WorkloadInfo]:
        """The pods this manager has (pending, up or draining) by UID, as ZDS described them."""
        return {uid: w.info for uid, w in self._workloads.items()}

    def state_of(self, uid: str) -> WorkloadState:
        workload = self._workloads.get(uid)
        return WorkloadState.GONE if workload is None else workload.state

    def dump(self) -> dict[str, Any]:
        """The ``workloadState`` part of /config_dump, keyed by pod UID."""
        out: dict[str, Any] = {}
        for uid, w in self._workloads.items():
            entry: dict[str, Any] = {
                "info": {"name": w.info.name, "namespace": w.info.namespace,
                         "serviceAccount": w.info.service_account},
                "state": w.state.value,
                "netns": str(w.netns),
            }
            if w.error is not None and w.state is WorkloadState.PENDING:
                entry["error"] = w.error
            out[uid] = entry
        return out

    # -- internals (called with the lock held) ---------------------------------------------

    async def _start_or_raise(self, workload: _Workload) -> None:
        if (error := await self._start(workload)) is not None:
            self._ensure_retry(workload)
            raise InmeshError(f"failure to start proxy: {error}")

    async def _start(self, workload: _Workload) -> str | None:
        """One start attempt; returns the error text, or None once the proxy is Up."""
        proxy = self._factory(workload.uid, workload.info, workload.netns_fd)
        try:
            await proxy.start()
        except (InmeshError, OSError) as exc:
            workload.error = f"pod {workload.label} (uid {workload.uid}): {exc}"
            log.warning("%s; retrying every %.1f s", workload.error, self._retry_interval)
            self._gauges()
            return workload.error
        workload.proxy, workload.error = proxy, None
        workload.move(WorkloadState.UP)
        if workload.retry is not None and workload.retry is not asyncio.current_task():
            workload.retry.cancel()
        workload.retry = None
        self._count("proxies_started")
        return None

    def _ensure_retry(self, workload: _Workload) -> None:
        if workload.retry is None:
            task = asyncio.get_running_loop().create_task(
                self._retry(workload), name=f"retry-{workload.uid}")
            workload.retry = task
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
        self._gauges()

    async def _retry(self, workload: _Workload) -> None:
        while True:
            await asyncio.sleep(self._retry_interval)
            async with self._lock:
                if workload.state is not WorkloadState.PENDING:
                    return
                if await self._start(workload) is None:
                    log.info("pod %s (uid %s): proxy started on retry", workload.label,
                             workload.uid)
                    self._gauges()
                    return

    async def _remove(self, workload: _Workload, deadline: float | None) -> None:
        if workload.retry is not None:
            workload.retry.cancel()
            workload.retry = None
        try:
            if workload.proxy is not None:
                workload.move(WorkloadState.DRAINING)
                self._gauges()
                await workload.proxy.drain(deadline)
        finally:  # even if the drain failed or was cancelled, the workload is gone
            if workload.proxy is not None:
                self._count("proxies_stopped")
            workload.move(WorkloadState.GONE)
            os.close(workload.netns_fd)
            if self._workloads.get(workload.uid) is workload:
                del self._workloads[workload.uid]
            self._gauges()

    def _pending(self) -> list[_Workload]:
        return [w for w in self._workloads.values() if w.state is WorkloadState.PENDING]

    def _gauges(self) -> None:
        if self._metrics is not None:
            states = [w.state for w in self._workloads.values()]
            self._metrics.active_proxies.set(states.count(WorkloadState.UP))
            self._metrics.pending_proxies.set(states.count(WorkloadState.PENDING))

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _count(self, name: str) -> None:
        if self._metrics is not None:
            getattr(self._metrics, name).inc()
