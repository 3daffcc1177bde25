"""The agent's core: enroll and un-enroll pods, and remember them.

Enrolling (reference 1.2 step 4): open the pod's netns, install and verify the redirection rules
inside it, then hand the netns to the newest proxy over ZDS and wait for its ack. The cache keeps
the netns fd open for as long as the pod is enrolled, feeds the ZDS snapshot and is persisted, so a
restarted agent picks up where it left. Un-enrolling removes the rules (unless the pod is gone),
tells every proxy, and forgets the pod. Operations on one pod are serialized.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inmesh import netns
from inmesh.agent.rulespec import redirect_spec_for
from inmesh.agent.state import EnrolledRecord, StateFile
from inmesh.cluster.model import PodMeta
from inmesh.constants import ANNOTATION_REDIRECTION
from inmesh.errors import InmeshError
from inmesh.redirect import RedirectSpec, RuleBackend
from inmesh.zds.messages import WorkloadInfo
from inmesh.zds.server import SnapshotEntry

log = logging.getLogger(__name__)


REDIRECTION_ENABLED = "enabled"
REDIRECTION_PENDING = "pending"


class PodState(enum.Enum):
    PENDING = "pending"
    """Rules are installed; the proxy has not acknowledged the pod yet (traffic is refused)."""
    ENROLLED = "enrolled"
    """Rules are installed and the proxy serves the pod."""


class EnrollError(InmeshError):
    """Enrollment failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ZdsPeer(Protocol):
    """What the agent needs of the ZDS server (a fake in unit tests)."""

    @property
    def connection_count(self) -> int: ...

    async def add_workload(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None: ...

    async def del_workload(self, uid: str) -> None: ...


@dataclass
class PodEntry:
    uid: str
    name: str
    namespace: str
    service_account: str
    netns_path: str
    netns_fd: int
    netns_id: netns.NetnsId
    ips: tuple[str, ...]
    spec: RedirectSpec
    container_id: str = ""
    state: PodState = PodState.PENDING
    error: str | None = None

    @property
    def info(self) -> WorkloadInfo:
        return WorkloadInfo(self.name, self.namespace, self.service_account)

    @property
    def fd_path(self) -> str:
        """A path to exactly the namespace we hold open (immune to the named path being reused)."""
        return f"/proc/{os.getpid()}/fd/{self.netns_fd}"

    def record(self) -> EnrolledRecord:
        return EnrolledRecord(
            uid=self.uid,
            name=self.name,
            namespace=self.namespace,
            service_account=self.service_account,
            netns_path=self.netns_path,
            netns_dev=self.netns_id.dev,
            netns_ino=self.netns_id.ino,
            ips=self.ips,
            container_id=self.container_id,
        )

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "state": self.state.value,
            "ips": list(self.ips),
            "netns": self.netns_path,
            "netnsInode": self.netns_id.ino,
            "error": self.error,
        }


class PodRegistry:
    """Enrolled pods of this node, with the operations that change them."""

    def __init__(
        self,
        backend: RuleBackend,
        zds: ZdsPeer,
        state: StateFile,
        other_backends: Sequence[RuleBackend] = (),
        annotate: Callable[[str, str, str | None], None] | None = None,
    ) -> None:
        self.backend = backend
        self._annotate = annotate
        """Writes the pod's redirection annotation (Istio: ambient.istio.io/redirection), which
        tells the control plane the pod can receive HBONE."""
        self._annotated: dict[str, str | None] = {}
        self.other_backends = other_backends
        """Backends whose leftovers are swept when a pod is restored (the setting changed)."""
        self.zds = zds
        self._state = state
        self.pods: dict[str, PodEntry] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- views -------------------------------------------------------------------------------
    def snapshot(self) -> Sequence[SnapshotEntry]:
        """What a newly connected proxy must serve: every pod we hold a netns for."""
        return [SnapshotEntry(e.uid, e.info, e.netns_fd) for e in self.pods.values()]

    def status(self) -> dict[str, Any]:
        return {uid: e.status() for uid, e in sorted(self.pods.items())}

    def _persist(self) -> None:
        self._state.save({uid: e.record() for uid, e in self.pods.items()})

    # -- enrollment ----------------------------------------------------------------------------
    async def enroll(
        self, pod: PodMeta, netns_path: str, ips: tuple[str, ...], container_id: str = ""
    ) -> PodEntry:
        """Redirect ``pod`` inside ``netns_path`` and hand it to the proxy (idempotent)."""
        async with self._locks[pod.uid]:
            entry = await self._install(pod, netns_path, ips, container_id)
            await self._hand_to_proxy(entry)
            return entry

    async def _install(
        self, pod: PodMeta, netns_path: str, ips: tuple[str, ...], container_id: str
    ) -> PodEntry:
        try:
            fd = netns.open_netns(netns_path)
        except InmeshError as exc:
            raise EnrollError(f"pod {pod.namespace}/{pod.name}: {exc}", retryable=False) from exc
        ident = netns.netns_id_of_fd(fd)
        old = self.pods.get(pod.uid)
        if old is not None and old.netns_id == ident:
            os.close(fd)
            fd = old.netns_fd
        entry = PodEntry(
            uid=pod.uid,
            name=pod.name,
            namespace=pod.namespace,
            service_account=pod.service_account,
            netns_path=netns_path,
            netns_fd=fd,
            netns_id=ident,
            ips=ips,
            spec=redirect_spec_for(pod, ips),
            container_id=container_id or (old.container_id if old else ""),
            state=old.state if old is not None and old.netns_fd == fd else PodState.PENDING,
        )
        try:
            changed = await asyncio.to_thread(self.backend.apply, entry.fd_path, entry.spec)
        except InmeshError as exc:
            if old is None or old.netns_fd != fd:
                os.close(fd)
            raise EnrollError(
                f"pod {pod.namespace}/{pod.name}: installing rules failed: {exc}", retryable=False
            ) from exc
        if old is not None and old.netns_fd != fd:
            log.info("pod %s/%s has a new netns %s (was %s)", pod.namespace, pod.name, ident,
                     old.netns_id)
            os.close(old.netns_fd)
        log.info("pod %s/%s: rules %s (%s)", pod.namespace, pod.name,
                 "installed" if changed else "already in place", self.backend.name)
        self.pods[pod.uid] = entry
        self._persist()
        return entry

    async def _hand_to_proxy(self, entry: PodEntry) -> None:
        try:
            await self.zds.add_workload(entry.uid, entry.info, entry.netns_fd)
        except InmeshError as exc:
            entry.state, entry.error = PodState.PENDING, f"proxy: {exc}"
            await self._mark(entry.uid, REDIRECTION_PENDING)
            raise EnrollError(
                f"pod {entry.namespace}/{entry.name}: the proxy did not take it: {exc}",
                retryable=True,
            ) from exc
        entry.state, entry.error = PodState.ENROLLED, None
        await self._mark(entry.uid, REDIRECTION_ENABLED)

    async def _mark(self, uid: str, value: str | None, force: bool = False) -> None:
        """Write the redirection annotation if it changed (best effort: logged on failure)."""
        if self._annotate is None or (not force and self._annotated.get(uid) == value):
            return
        try:
            await asyncio.to_thread(self._annotate, uid, ANNOTATION_REDIRECTION, value)
        except InmeshError as exc:
            log.warning("cannot annotate pod %s: %s", uid, exc)
            return
        if value is None:
            self._annotated.pop(uid, None)
        else:
            self._annotated[uid] = value

    async def retry_pending(self, uid: str) -> None:
        async with self._locks[uid]:
            entry = self.pods.get(uid)
            if entry is not None and entry.state is PodState.PENDING:
                await self._hand_to_proxy(entry)

    async def restore(self, record: EnrolledRecord, pod: PodMeta, netns_path: str) -> PodEntry:
        """Re-adopt a pod enrolled before a restart: reconcile its rules, keep it pending."""
        async with self._locks[pod.uid]:
            await asyncio.to_thread(self._sweep_other_backends, netns_path, pod)
            return await self._install(pod, netns_path, record.ips, record.container_id)

    def _sweep_other_backends(self, netns_path: str, pod: PodMeta) -> None:
        for other in self.other_backends:
            if other.installed(netns_path):
                log.info("pod %s/%s: removing %s rules left by an earlier setting",
                         pod.namespace, pod.name, other.name)
                other.remove(netns_path)

    async def unenroll(self, uid: str, *, pod_deleted: bool) -> bool:
        """Take ``uid`` out of the mesh. Returns False if it was not enrolled."""
        async with self._locks[uid]:
            entry = self.pods.get(uid)
            if entry is None:
                return False
            if not pod_deleted:
                try:
                    await asyncio.to_thread(self.backend.remove, entry.fd_path)
                except InmeshError as exc:
                    entry.error = f"removing rules failed: {exc}"
                    raise
            await self.zds.del_workload(uid)
            del self.pods[uid]
            if not pod_deleted:
                await self._mark(uid, None, force=True)
            self._annotated.pop(uid, None)
            os.close(entry.netns_fd)
            self._persist()
            log.info("pod %s/%s left the mesh (%s)", entry.namespace, entry.name,
                     "deleted" if pod_deleted else "un-enrolled")
            return True

    async def verify_and_repair(self, uid: str) -> list[str]:
        """Check one pod's rules against the kernel; reapply on drift. Returns the drift seen."""
        async with self._locks[uid]:
            entry = self.pods.get(uid)
            if entry is None:
                return []
            drift = await asyncio.to_thread(self.backend.verify, entry.fd_path, entry.spec)
            if drift:
                log.warning("pod %s/%s: rule drift, repairing: %s", entry.namespace, entry.name,
                            "; ".join(drift))
                await asyncio.to_thread(self.backend.apply, entry.fd_path, entry.spec)
            return drift

    def close(self) -> None:
        for entry in self.pods.values():
            os.close(entry.netns_fd)
        self.pods.clear()
