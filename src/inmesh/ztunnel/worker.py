"""An inbound worker process: serves port 15008 (HBONE) of the pods ztunnel hands it.

Started by ztunnel (`inmesh.ztunnel.offload`) as ``python -m inmesh.ztunnel.worker FD`` with
one end of a record channel (`inmesh.ztunnel.channel`). It gets everything from ztunnel and
nothing from anyone else: settings, the workload table (xDS resources as ztunnel received
them), the certificates and keys of the pods' identities, and per pod a duplicate of its 15008
listener and its netns. It accepts on those listeners with the same code ztunnel uses
(`PodTunnels.inbound`), reports every connection event back (ztunnel keeps the metrics) and
drains a pod when told. It exits when ztunnel says so or goes away (the channel closes):
a worker never outlives its ztunnel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Set
from datetime import UTC, datetime
from typing import Any

import uvloop

from inmesh.errors import InmeshError
from inmesh.hbone import HboneSettings
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel import workerproto as wp
from inmesh.ztunnel.channel import Channel
from inmesh.ztunnel.errors import CertUnavailable
from inmesh.ztunnel.malloc import keep_buffers_on_heap
from inmesh.ztunnel.mesh import Mesh
from inmesh.ztunnel.metrics import TrafficLabels
from inmesh.ztunnel.relay import reset_close
from inmesh.ztunnel.settings import ProxySettings
from inmesh.ztunnel.sockets import PodSockets
from inmesh.ztunnel.tunnels import PodTunnels
from inmesh.ztunnel.workloads import WorkloadTable

log = logging.getLogger("inmesh.ztunnel.worker")  # not __main__ when run with -m

CERT_WAIT = 5.0
"""Seconds a connection waits for ztunnel to send a certificate it does not have yet."""


class PushedCerts:
    """The certificates ztunnel pushed (a `CertSource` for `Mesh`): `get` waits a little for
    one that has not arrived, then fails the connection as a missing certificate would."""

    def __init__(self) -> None:
        self._bundles: dict[SpiffeId, CertBundle] = {}
        self._waiters: dict[SpiffeId, list[asyncio.Future[CertBundle]]] = {}

    async def get(self, identity: SpiffeId) -> CertBundle:
        bundle = self._bundles.get(identity)
        if bundle is not None and not bundle.expired(datetime.now(UTC)):
            return bundle
        waiter: asyncio.Future[CertBundle] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(identity, []).append(waiter)
        try:
            async with asyncio.timeout(CERT_WAIT):
                return await waiter
        except TimeoutError:
            raise CertUnavailable(f"no certificate for {identity} from ztunnel") from None
        finally:
            waiters = self._waiters.get(identity, [])
            if waiter in waiters:
                waiters.remove(waiter)

    def put(self, bundle: CertBundle) -> None:
        self._bundles[bundle.identity] = bundle
        for waiter in self._waiters.pop(bundle.identity, []):
            if not waiter.done():
                waiter.set_result(bundle)

    def drop(self, identity: SpiffeId) -> None:
        self._bundles.pop(identity, None)  # the key goes with it

    def set_wanted(self, identities: Set[SpiffeId]) -> None:
        """ztunnel decides which certificates exist; nothing to do here."""

    def dump(self) -> list[dict[str, Any]]:
        return []


class _Reporter:
    """Connection events for ztunnel's metrics, sent once per loop iteration in one record
    (not one per event: under load ztunnel would spend its time reading them)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._events: list[dict[str, Any]] = []
        self._loop = asyncio.get_running_loop()

    def add(self, event: dict[str, Any]) -> None:
        if not self._events:
            self._loop.call_soon(self._flush)
        self._events.append(event)

    def _flush(self) -> None:
        events, self._events = self._events, []
        for record in wp.traffic(events):
            self._channel.send(record)


class _PodCounter:
    """A pod's connection events (a `TrafficCounter` for its `PodTunnels`)."""

    def __init__(self, reporter: _Reporter, uid: str) -> None:
        self._reporter, self._uid = reporter, uid

    def opened(self, labels: TrafficLabels) -> None:
        self._reporter.add(wp.event("opened", self._uid, labels))

    def closed(self, labels: TrafficLabels, received: int, sent: int) -> None:
        self._reporter.add(wp.event("closed", self._uid, labels, received, sent))

    def failed(self, labels: TrafficLabels) -> None:
        self._reporter.add(wp.event("failed", self._uid, labels))


class _Pod:
    """One pod's 15008: the listener copy, the netns thread, the live connections."""

    def __init__(self, uid: str, info: WorkloadInfo, listener: socket.socket, netns_fd: int,
                 worker: Worker) -> None:
        self.uid, self.info, self.listener = uid, info, listener
        self.label = f"{info.namespace}/{info.name}"
        self.sockets = PodSockets(netns_fd, worker.proxy, self.label)
        self.tunnels = PodTunnels(self.label, info, worker.mesh, self.sockets, worker.proxy,
                                  _PodCounter(worker.reporter, uid))
        self.conns: set[asyncio.Task[None]] = set()
        self.accepting = True


class Worker:
    """The worker's state and message loop; see the module docstring."""

    def __init__(self, channel: Channel, node: str, trust_domain: str, proxy: ProxySettings,
                 hbone: HboneSettings) -> None:
        self.channel = channel
        self.proxy = proxy
        self.table = WorkloadTable()
        self.certs = PushedCerts()
        self.mesh = Mesh(self.table, self.certs, node=node, trust_domain=trust_domain,
                         hbone=hbone)
        self.pods: dict[str, _Pod] = {}
        self.reporter = _Reporter(channel)
        self._loop = asyncio.get_running_loop()

    async def run(self) -> None:
        """Serve until ztunnel says ``exit`` or goes away; then reset what is left."""
        self.channel.send(wp.encode("ready", pid=os.getpid()))
        try:
            while True:
                data, fds = await self.channel.recv()
                if not data:
                    log.info("inbound worker: ztunnel went away")
                    return
                try:
                    if not self._handle(wp.decode(data), fds):
                        return
                except (InmeshError, KeyError, TypeError, ValueError) as exc:
                    log.error("inbound worker: bad message from ztunnel: %r", exc)
                finally:
                    for fd in fds:
                        os.close(fd)
        finally:
            await asyncio.gather(*(self._drain(uid, None) for uid in list(self.pods)))

    def _handle(self, message: wp.Message, fds: list[int]) -> bool:
        kind = message["t"]
        if kind == "xds":
            self.table.apply(*wp.xds_of(message))
        elif kind == "cert":
            self.certs.put(wp.bundle_of(message))
        elif kind == "uncert":  # no pod of this identity left: its key goes everywhere
            identity = SpiffeId.parse(message["identity"])
            self.certs.drop(identity)
            self.mesh.forget(identity)
        elif kind == "pod":
            self._add(message["uid"], wp.info_of(message), fds)
        elif kind == "drain":
            deadline = message.get("deadline")
            self._loop.create_task(self._drain_and_report(
                message["uid"], None if deadline is None else self._loop.time() + deadline))
        elif kind == "ping":
            self.channel.send(wp.encode("pong"))
        elif kind == "exit":
            return False
        else:
            log.warning("inbound worker: unknown message %r ignored", kind)
        return True

    def _add(self, uid: str, info: WorkloadInfo, fds: list[int]) -> None:
        if len(fds) != 2:
            raise ValueError(f"pod {uid}: expected a listener and a netns fd, got {len(fds)}")
        if uid in self.pods:
            return
        listener = socket.socket(fileno=os.dup(fds[0]))
        listener.setblocking(False)
        pod = _Pod(uid, info, listener, fds[1], self)
        self.pods[uid] = pod
        self._loop.add_reader(listener.fileno(), self._accept, pod)
        log.info("inbound worker: serving HBONE of pod %s", pod.label)

    def _accept(self, pod: _Pod) -> None:
        for _ in range(self.proxy.accept_batch):
            try:
                conn, _ = pod.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                log.warning("pod %s: accept failed: %s", pod.label, exc.strerror)
                return
            self._spawn(pod, conn)

    def _spawn(self, pod: _Pod, conn: socket.socket) -> None:
        task = self._loop.create_task(self._serve(pod, conn))
        pod.conns.add(task)
        task.add_done_callback(pod.conns.discard)

    async def _serve(self, pod: _Pod, conn: socket.socket) -> None:
        try:
            await pod.tunnels.inbound(conn)
        except Exception:
            log.exception("pod %s: HBONE connection failed", pod.label)
            reset_close(conn)

    async def _drain_and_report(self, uid: str, deadline: float | None) -> None:
        await self._drain(uid, deadline)
        self.channel.send(wp.encode("drained", uid=uid))

    async def _drain(self, uid: str, deadline: float | None) -> None:
        pod = self.pods.pop(uid, None)
        if pod is None:
            return
        self._loop.remove_reader(pod.listener.fileno())
        if deadline is not None:
            self._accept(pod)  # what the kernel already completed is served, not reset
        pod.listener.close()
        pod.tunnels.start_drain()  # HBONE peers move new tunnels elsewhere (GOAWAY)
        pending = set(pod.conns)
        if pending and deadline is not None:
            _, pending = await asyncio.wait(pending, timeout=max(0.0, deadline
                                                                 - self._loop.time()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await pod.tunnels.close()
        pod.sockets.close()
        log.info("inbound worker: pod %s drained", pod.label)


async def _main(fd: int) -> int:
    channel = Channel(socket.socket(fileno=fd))
    data, fds = await channel.recv()
    for extra in fds:
        os.close(extra)
    if not data:
        return 1
    hello = wp.decode(data)
    if hello["t"] != "hello":
        log.error("inbound worker: expected hello, got %r", hello["t"])
        return 1
    logging.basicConfig(level=int(hello["log_level"]),
                        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s")
    proxy, hbone = wp.settings_of(hello)
    worker = Worker(channel, hello["node"], hello["trust_domain"], proxy, hbone)
    try:
        await worker.run()
    finally:
        channel.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m inmesh.ztunnel.worker CHANNEL_FD (started by ztunnel)",
              file=sys.stderr)
        return 2
    keep_buffers_on_heap()
    return uvloop.run(_main(int(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
