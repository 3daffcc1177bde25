"""Workload discovery: the cluster store's pods as a live snapshot of xDS Address resources.

`StoreWorkloadSource` is the `inmesh.xds.server.WorkloadSnapshotSource` the control plane
serves: `run()` polls the pod source (cheap while the file is unchanged), rebuilds the
workloads when it changed, and wakes every stream waiting in `wait_changed` only if some
resource really differs. The resources themselves are built by `discovery_workloads` (pure).
"""

from __future__ import annotations

import asyncio
import logging

from inmesh.cluster.model import ClusterView, PodSource
from inmesh.controlplane.discovery_workloads import (
    DEFAULT_CLUSTER_ID,
    build_snapshot,
    pod_workload,
    workload_resources,
    workload_uid,
)
from inmesh.errors import ConfigError
from inmesh.identity import DEFAULT_TRUST_DOMAIN
from inmesh.xds.resources import Snapshot

__all__ = [
    "DEFAULT_CLUSTER_ID",
    "DEFAULT_POLL_INTERVAL",
    "StoreWorkloadSource",
    "build_snapshot",
    "pod_workload",
    "workload_resources",
    "workload_uid",
]

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 0.2
"""Seconds between looks at the pod source. A look is one stat() while nothing changed, so it
is cheap; 0.2 s keeps the delay from "agent annotated the pod" to "peers send it HBONE" well
under the proxies' 5 s wait for workload info (reference 10.26)."""


class StoreWorkloadSource:
    """Pods of `store` as Address resources, with change notification.

    `trust_domain` empty means cluster.local; `cluster_id` prefixes the workload uids."""

    def __init__(
        self,
        store: PodSource,
        trust_domain: str = "",
        cluster_id: str = DEFAULT_CLUSTER_ID,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if poll_interval <= 0:
            raise ConfigError(f"discovery poll interval must be > 0 seconds, got {poll_interval}")
        self._store = store
        self.trust_domain = trust_domain or DEFAULT_TRUST_DOMAIN
        self.cluster_id = cluster_id
        self._poll_interval = poll_interval
        self._view: ClusterView | None = None
        self._snapshot = Snapshot()
        self._changed = asyncio.Event()

    def snapshot(self) -> Snapshot:
        """The newest snapshot (looks at the store first, so it is current without `run`)."""
        self.refresh()
        return self._snapshot

    async def wait_changed(self, generation: int) -> Snapshot:
        while self._snapshot.generation == generation:
            await self._changed.wait()
        return self._snapshot

    async def run(self) -> None:
        """Poll the store forever; returns only by cancellation."""
        while True:
            self.refresh()
            await asyncio.sleep(self._poll_interval)

    def refresh(self) -> bool:
        """Look at the store once; True if the resources changed (waiters are woken).

        An unreadable store is logged and the last good snapshot kept: proxies are better
        served by slightly stale workloads than by none."""
        try:
            view = self._store.view()
        except ConfigError as exc:
            log.warning("discovery: cannot read the pod source, keeping the last state: %s", exc)
            return False
        if view is self._view:
            return False
        self._view = view
        fresh = build_snapshot(
            view, self.trust_domain, self.cluster_id, self._snapshot.generation + 1
        )
        if fresh.versions() == self._snapshot.versions():
            return False
        self._snapshot = fresh
        log.info("discovery: %d workloads (generation %d)", len(fresh.resources), fresh.generation)
        self._changed.set()
        self._changed = asyncio.Event()
        return True
