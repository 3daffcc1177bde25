"""Keeps the node's pods in the state the source asks for.

Each pass compares the source's view of this node's pods with the registry: running pods that
gained the label are enrolled (netns from the source, verified by IP ownership, else a /proc
scan), pods that lost it are un-enrolled, deleted pods are dropped, pods the proxy has not yet
acknowledged are offered again. A periodic pass verifies every enrolled pod's rules against the
kernel and repairs drift. Failures back off per pod and never stop the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from inmesh.agent import procscan
from inmesh.agent.service import PodRegistry, PodState
from inmesh.agent.settings import AgentSettings
from inmesh.agent.state import EnrolledRecord
from inmesh.cluster.enrollment import decide
from inmesh.cluster.model import PodMeta, PodSource
from inmesh.errors import InmeshError, NotFoundError

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Per-pod exponential back-off for failing operations (0.5 s doubling to a cap)."""

    cap: float
    _next: dict[str, float] = field(default_factory=dict)
    _delay: dict[str, float] = field(default_factory=dict)

    def ready(self, uid: str, now: float) -> bool:
        return now >= self._next.get(uid, 0.0)

    def failed(self, uid: str, now: float) -> None:
        delay = min(self._delay.get(uid, 0.25) * 2, self.cap)
        self._delay[uid], self._next[uid] = delay, now + delay

    def succeeded(self, uid: str) -> None:
        self._next.pop(uid, None)
        self._delay.pop(uid, None)


async def locate_netns(pod: PodMeta, ips: tuple[str, ...], hint: str | None) -> str:
    """The pod's netns path: the hint if it holds the pod's IP, else a /proc scan."""
    if hint:
        owned: bool = await asyncio.to_thread(procscan.owns_ips, hint, ips)
        if owned:
            return hint
    found = await asyncio.to_thread(procscan.find_pod_netns, ips)
    log.info("pod %s/%s: netns found by scan at %s", pod.namespace, pod.name, found.path)
    return found.path


class Reconciler:
    def __init__(self, settings: AgentSettings, source: PodSource, registry: PodRegistry) -> None:
        self.settings = settings
        self.source = source
        self.registry = registry
        self.backoff = Backoff(settings.retry_backoff_max)
        self.last_errors: dict[str, str] = {}

    async def restore(self, records: dict[str, EnrolledRecord]) -> None:
        """Start-up: re-adopt what the previous agent enrolled, before serving anything."""
        view = self.source.view()
        for uid, rec in records.items():
            pod = view.pods.get(uid)
            if pod is None or pod.node != self.settings.node:
                log.info("pod %s/%s is gone since the last run", rec.namespace, rec.name)
                continue
            if not decide(pod, view.namespace(pod.namespace),
                          self.settings.excluded_namespaces).enroll:
                continue  # the next pass removes its rules through the normal path
            try:
                path = await locate_netns(pod, rec.ips, rec.netns_path)
                await self.registry.restore(rec, pod, path)
            except InmeshError as exc:
                log.error("cannot restore pod %s/%s: %s", rec.namespace, rec.name, exc)
                self.last_errors[uid] = str(exc)

    async def run_once(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        view = self.source.view()
        mine = {p.uid: p for p in view.pods_on_node(self.settings.node)}
        for uid in [u for u in self.registry.pods if u not in mine]:
            await self._guard(uid, now, partial(self.registry.unenroll, uid, pod_deleted=True))
        for uid, pod in mine.items():
            wanted = decide(pod, view.namespace(pod.namespace),
                            self.settings.excluded_namespaces).enroll
            entry = self.registry.pods.get(uid)
            if not wanted and entry is not None:
                await self._guard(uid, now, partial(self.registry.unenroll, uid, pod_deleted=False))
            elif wanted and entry is None and pod.phase == "Running" and pod.ips:
                await self._guard(uid, now, partial(self._enroll_running, pod))
            elif (
                entry is not None
                and entry.state is PodState.PENDING
                and self.registry.zds.connection_count
            ):
                await self._guard(uid, now, partial(self.registry.retry_pending, uid))

    async def _enroll_running(self, pod: PodMeta) -> None:
        path = await locate_netns(pod, pod.ips, pod.netns)
        await self.registry.enroll(pod, path, pod.ips)

    async def _guard(self, uid: str, now: float, op: Callable[[], Awaitable[object]]) -> None:
        if not self.backoff.ready(uid, now):
            return
        try:
            await op()
        except NotFoundError as exc:
            self.backoff.failed(uid, now)
            self.last_errors[uid] = str(exc)
        except InmeshError as exc:
            self.backoff.failed(uid, now)
            if self.last_errors.get(uid) != str(exc):
                log.warning("reconcile %s: %s", uid, exc)
            self.last_errors[uid] = str(exc)
        else:
            self.backoff.succeeded(uid)
            self.last_errors.pop(uid, None)

    async def check_drift(self) -> int:
        """Verify every enrolled pod's rules; returns how many pods needed repair."""
        repaired = 0
        for uid in list(self.registry.pods):
            try:
                repaired += bool(await self.registry.verify_and_repair(uid))
            except InmeshError as exc:
                log.error("drift check of %s failed: %s", uid, exc)
        return repaired

    async def run(self) -> None:
        last_drift = time.monotonic()
        while True:
            try:
                await self.run_once()
            except InmeshError as exc:  # a broken source must not kill the loop
                log.error("reconcile pass failed: %s", exc)
            if time.monotonic() - last_drift >= self.settings.drift_check_interval:
                await self.check_drift()
                last_drift = time.monotonic()
            await asyncio.sleep(self.settings.reconcile_interval)
