"""Inbound workers: port 15008 (HBONE) of every pod served by other processes than ztunnel's.

One Python process runs on one core at a time. With the whole tunnel in ztunnel, a node's
HBONE traffic is capped by one core, encrypting on the way out and decrypting on the way in.
`InboundWorkers` starts worker processes (`inmesh.ztunnel.worker`) and hands each of them a
duplicate of every pod's 15008 listener and netns: the workers accept and serve the inbound
tunnels while ztunnel keeps the outbound side, so a tunnel between two pods of one node is
served by two processes, like a tunnel between two nodes. With several workers the kernel
spreads the accepted connections over them (they share one listening socket).

ztunnel stays the only one that talks to the agent and the control plane: it forwards the xDS
resources it applies and the certificates (with their keys) of the identities it serves, and
counts the workers' connection events in its own metrics. Nothing is lost when a worker is not
there: until a worker says it is ready, and from the moment one dies until another is, ztunnel
serves 15008 itself (it keeps its listener), and a dead worker is restarted. When a worker is
ready again, the proxy sends GOAWAY on the HBONE connections it accepted meanwhile, so their
peers dial again and reach the worker (`PodTunnels.hand_back_inbound`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from inmesh.errors import InmeshError
from inmesh.hbone import HboneSettings
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel import workerproto as wp
from inmesh.ztunnel.channel import Channel
from inmesh.ztunnel.metrics import ZtunnelMetrics
from inmesh.ztunnel.settings import ProxySettings

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0
"""Seconds before a worker that died is started again; doubled (up to `RESTART_MAX`) while
workers die within `STABLE_AFTER` seconds of their start."""
RESTART_MAX = 30.0
STABLE_AFTER = 10.0
EXIT_GRACE = 3.0
"""Seconds a worker has to exit after ``exit`` before it is killed."""
DRAIN_SLACK = 2.0
"""Seconds past a drain deadline ztunnel waits for a worker's ``drained``."""
HEARTBEAT_INTERVAL = 2.0
"""Seconds between ``ping`` records to a ready worker."""
HEARTBEAT_TIMEOUT = 10.0
"""Seconds without a ``pong`` after which a worker counts as hung: it is killed (ztunnel
serves its pods meanwhile) and another is started."""

LocalServing = Callable[[bool], None]
"""Tells a pod proxy whether ztunnel itself must accept on its 15008 listener."""


@dataclass
class _Pod:
    uid: str
    info: WorkloadInfo
    listener: socket.socket  # ztunnel's own; the workers get duplicates
    netns_fd: int  # a duplicate, owned here
    local: LocalServing
    inbound: int = 0  # live inbound streams the workers reported


@dataclass
class _Worker:
    index: int
    channel: Channel
    process: asyncio.subprocess.Process
    started: float
    delay: float  # what the next restart waits if this one dies young
    ready: bool = False
    drained: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    last_pong: float = 0.0


class InboundWorkers:
    """See the module docstring. `start`, then `offer` / `withdraw` pods; `close` at the end."""

    def __init__(self, count: int, *, node: str, trust_domain: str, proxy: ProxySettings,
                 hbone: HboneSettings, metrics: ZtunnelMetrics,
                 resources: Callable[[], Mapping[str, bytes]],
                 certificates: Callable[[], Collection[CertBundle]]) -> None:
        self.count = count
        self._hello = wp.hello(node, trust_domain, proxy, hbone, logging.getLogger().level)
        self._metrics = metrics
        self._resources = resources
        self._certificates = certificates
        self._pods: dict[str, _Pod] = {}
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop = asyncio.get_running_loop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.count):
            self._spawn_soon(index, 0.0)

    async def close(self) -> None:
        """Tell every worker to exit (they reset what they still serve), wait, kill stragglers."""
        self._closing = True
        workers = list(self._workers.values())
        for worker in workers:
            worker.channel.send(wp.encode("exit"))
        for worker in workers:
            try:
                async with asyncio.timeout(EXIT_GRACE):
                    await worker.process.wait()
            except TimeoutError:
                log.warning("inbound worker %d did not exit; killing pid %d", worker.index,
                            worker.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pod in self._pods.values():
            os.close(pod.netns_fd)
        self._pods.clear()

    @property
    def ready_count(self) -> int:
        return sum(w.ready for w in self._workers.values())

    # -- pods ------------------------------------------------------------------------------

    def offer(self, uid: str, info: WorkloadInfo, listener: socket.socket, netns_fd: int,
              local: LocalServing) -> None:
        """Serve pod ``uid``'s 15008 in the workers from now on (``netns_fd`` is borrowed).
        ``local`` is told whether ztunnel must accept on ``listener`` itself meanwhile."""
        pod = _Pod(uid, info, listener, os.dup(netns_fd), local)
        self._pods[uid] = pod
        ready = [w for w in self._workers.values() if w.ready]
        for worker in ready:
            self._hand_over(worker, pod)
        local(not ready)

    async def withdraw(self, uid: str, deadline: float | None) -> None:
        """The pod is going: its workers stop accepting, serve their connections until
        ``deadline`` (loop time; None: reset them now) and let go of it."""
        pod = self._pods.pop(uid, None)
        if pod is None:
            return
        os.close(pod.netns_fd)
        waits = []
        relative = None if deadline is None else max(0.0, deadline - self._loop.time())
        for worker in self._workers.values():
            if not worker.ready:
                continue
            done = self._loop.create_future()
            worker.drained[uid] = done
            worker.channel.send(wp.encode("drain", uid=uid, deadline=relative))
            waits.append(done)
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout((relative or 0.0) + DRAIN_SLACK):
                    await asyncio.gather(*waits, return_exceptions=True)

    def inbound_streams(self, uid: str) -> int:
        pod = self._pods.get(uid)
        return pod.inbound if pod is not None else 0

    # -- what the workers must know --------------------------------------------------------

    def xds_applied(self, added: Mapping[str, bytes], removed: Collection[str]) -> None:
        records = wp.xds_batches(added, list(removed))
        for worker in self._workers.values():
            for record in records:
                worker.channel.send(record)

    def cert_changed(self, identity: SpiffeId, bundle: CertBundle | None) -> None:
        record = wp.cert(bundle) if bundle is not None \
            else wp.encode("uncert", identity=identity.uri)
        for worker in self._workers.values():
            worker.channel.send(record)

    # -- internals -------------------------------------------------------------------------

    def _spawn_soon(self, index: int, delay: float) -> None:
        task = self._loop.create_task(self._run(index, delay), name=f"inbound-worker-{index}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._closing:
            return
        ours, theirs = Channel.pair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "inmesh.ztunnel.worker", str(theirs.fileno()),
                pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            log.error("cannot start inbound worker %d: %s; retrying", index, exc)
            self._spawn_soon(index, RESTART_DELAY)
            return
        finally:
            theirs.close()
        worker = _Worker(index, Channel(ours), process, self._loop.time(), delay)
        self._workers[index] = worker
        worker.channel.send(self._hello)
        for record in wp.xds_batches(self._resources(), []):
            worker.channel.send(record)
        for bundle in self._certificates():
            worker.channel.send(wp.cert(bundle))
        heartbeat = self._loop.create_task(self._heartbeat(worker))
        try:
            await self._listen(worker)
        finally:
            heartbeat.cancel()
            await self._lost(worker)

    async def _heartbeat(self, worker: _Worker) -> None:
        """Ping a ready worker; kill it if it stops answering (a hung worker would hold its
        pods' connections without serving them)."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if not worker.ready:
                continue
            if self._loop.time() - worker.last_pong > HEARTBEAT_TIMEOUT:
                log.error("inbound worker %d (pid %d) stopped answering for %.0f s; killing it",
                          worker.index, worker.process.pid, HEARTBEAT_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                return
            worker.channel.send(wp.encode("ping"))

    async def _listen(self, worker: _Worker) -> None:
        while True:
            data, fds = await worker.channel.recv()
            for fd in fds:
                os.close(fd)
            if not data:
                return
            try:
                self._handle(worker, wp.decode(data))
            except (InmeshError, KeyError, TypeError, ValueError) as exc:
                log.error("inbound worker %d: bad message: %r", worker.index, exc)

    def _handle(self, worker: _Worker, message: wp.Message) -> None:
        kind = message["t"]
        if kind == "pong":
            worker.last_pong = self._loop.time()
        elif kind == "ready":
            worker.ready = True
            worker.last_pong = self._loop.time()
            log.info("inbound worker %d ready (pid %d)", worker.index, worker.process.pid)
            for pod in self._pods.values():
                self._hand_over(worker, pod)
                pod.local(False)
        elif kind == "traffic":
            for event in message["events"]:
                self._count(event)
        elif kind == "drained":
            done = worker.drained.pop(message["uid"], None)
            if done is not None and not done.done():
                done.set_result(None)

    def _count(self, message: wp.Message) -> None:
        labels = wp.labels_of(message)
        op = message["op"]
        pod = self._pods.get(message["uid"])
        if op == "opened":
            self._metrics.opened(labels)
            if pod is not None:
                pod.inbound += 1
        elif op == "closed":
            self._metrics.closed(labels, int(message["received"]), int(message["sent"]))
            if pod is not None and pod.inbound:
                pod.inbound -= 1
        elif op == "failed":
            self._metrics.failed(labels)

    def _hand_over(self, worker: _Worker, pod: _Pod) -> None:
        worker.channel.send(wp.pod(pod.uid, pod.info), [pod.listener.fileno(), pod.netns_fd])

    async def _lost(self, worker: _Worker) -> None:
        """A worker's channel closed: ztunnel serves its pods until another worker is ready."""
        worker.channel.close()
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        for done in worker.drained.values():
            if not done.done():
                done.set_result(None)
        if not self._closing:
            code = await worker.process.wait()
            log.error("inbound worker %d (pid %d) exited with %s; ztunnel serves HBONE itself "
                      "until it is back", worker.index, worker.process.pid, code)
            if not any(w.ready for w in self._workers.values()):
                for pod in self._pods.values():
                    pod.local(True)
            young = self._loop.time() - worker.started < STABLE_AFTER
            self._spawn_soon(worker.index, min(max(worker.delay * 2, RESTART_DELAY), RESTART_MAX)
                             if young else RESTART_DELAY)
