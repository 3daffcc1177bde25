"""WorkloadManager over real PodProxies: idempotent Add, NACK-and-retry when the app holds a
proxy port, and the SO_REUSEPORT handover between two ztunnels without a failed connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest

from inmesh import netns
from inmesh.errors import InmeshError
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.manager import WorkloadManager, WorkloadState
from inmesh.ztunnel.metrics import ZtunnelMetrics
from inmesh.ztunnel.proxy import PodProxy
from inmesh.ztunnel.settings import ProxySettings
from tests.system.nshelpers import NetnsFactory
from tests.system.ztunnel.podlab import (
    EchoServer,
    SocketMaker,
    build_pod_lab,
    echo_roundtrip,
    listen_in,
    run,
    wait_for,
)

INFO = WorkloadInfo("app-0", "shop", "app")


class CountingFactory:
    def __init__(self, metrics: ZtunnelMetrics) -> None:
        self.metrics = metrics
        self.made: list[PodProxy] = []

    def __call__(self, uid: str, info: WorkloadInfo, fd: int) -> PodProxy:
        proxy = PodProxy(uid, info, fd, ProxySettings(), self.metrics)
        self.made.append(proxy)
        return proxy


def opened(metrics: ZtunnelMetrics) -> float:
    return sum(s.value for f in metrics.registry.collect() for s in f.samples
               if s.name == "istio_tcp_connections_opened_total")


def test_add_twice_with_the_same_netns_is_a_no_op(netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        factory = CountingFactory(ZtunnelMetrics())
        manager = WorkloadManager(factory)
        server = EchoServer(listen_in(lab.server_path, lab.server_ip, 9000))
        app = SocketMaker(lab.pod_path)
        try:
            await manager.add_workload("uid-1", INFO, netns.open_netns(lab.pod_path))
            await manager.add_workload("uid-1", INFO, netns.open_netns(lab.pod_path))
            assert len(factory.made) == 1
            assert manager.state_of("uid-1") is WorkloadState.UP
            sock = await app.connect(lab.server_ip, 9000)
            assert await echo_roundtrip(sock, b"once") == b"once"
        finally:
            await manager.shutdown(None)
            app.close()
            await server.close()
    run(go())


def test_port_held_by_the_app_nacks_then_retries_until_up(netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        factory = CountingFactory(ZtunnelMetrics())
        manager = WorkloadManager(factory, retry_interval=0.05)
        await manager.snapshot_done(frozenset())
        manager.connection_changed(True)

        def squat() -> socket.socket:
            s = socket.socket(socket.AF_INET6)
            s.bind(("::", 15006))  # the app got there first, without SO_REUSEPORT
            return s

        squatter = netns.run_in_netns(lab.pod_path, squat)
        try:
            with pytest.raises(InmeshError, match=r"failure to start proxy.*15006"):
                await manager.add_workload("uid-1", INFO, netns.open_netns(lab.pod_path))
            assert manager.state_of("uid-1") is WorkloadState.PENDING
            assert manager.readiness_blockers() == ["workload uid-1 (shop/app-0)"]
            await wait_for(lambda: len(factory.made) >= 2)  # retried while the port is held
            assert manager.state_of("uid-1") is WorkloadState.PENDING
            squatter.close()
            await wait_for(lambda: manager.state_of("uid-1") is WorkloadState.UP)
            assert manager.readiness_blockers() == []
        finally:
            squatter.close()
            await manager.shutdown(None)
    run(go())


def test_second_ztunnel_takes_over_without_a_failed_connection(
        netns_factory: NetnsFactory) -> None:
    """Old and new manager share the pod's ports (SO_REUSEPORT); the old one drains while the
    app keeps connecting: every connection succeeds, before, during and after."""
    lab = build_pod_lab(netns_factory)
    total = 300

    async def go() -> None:
        loop = asyncio.get_running_loop()
        old_metrics, new_metrics = ZtunnelMetrics(), ZtunnelMetrics()
        old = WorkloadManager(CountingFactory(old_metrics))
        new = WorkloadManager(CountingFactory(new_metrics))
        server = EchoServer(listen_in(lab.server_path, lab.server_ip, 9000))
        app = SocketMaker(lab.pod_path)
        failures: list[str] = []
        done = 0
        try:
            await old.add_workload("uid-1", INFO, netns.open_netns(lab.pod_path))

            async def client_loop() -> None:
                nonlocal done
                for i in range(total):
                    payload = f"conn {i}".encode()
                    try:
                        sock = await app.connect(lab.server_ip, 9000)
                        if await echo_roundtrip(sock, payload) != payload:
                            failures.append(f"{i}: wrong echo")
                    except OSError as exc:
                        failures.append(f"{i}: {exc!r}")
                    done += 1

            clients = loop.create_task(client_loop())
            await wait_for(lambda: done >= total // 4)
            await new.add_workload("uid-1", INFO, netns.open_netns(lab.pod_path))
            await wait_for(lambda: done >= total // 2)
            await old.shutdown(loop.time() + 5.0)  # the old ztunnel got SIGTERM
            drained_at = done
            await clients
            assert failures == []
            assert opened(old_metrics) >= total // 4
            assert opened(new_metrics) >= total - drained_at
            assert opened(old_metrics) + opened(new_metrics) == total
        finally:
            await old.shutdown(None)
            await new.shutdown(None)
            app.close()
            await server.close()
    run(go())


def test_netns_fds_are_closed_when_workloads_go(netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        manager = WorkloadManager(CountingFactory(ZtunnelMetrics()))
        fd = netns.open_netns(lab.pod_path)
        pod_ns = os.readlink(f"/proc/self/fd/{fd}")
        await manager.add_workload("uid-1", INFO, fd)
        await manager.del_workload("uid-1")
        with contextlib.suppress(FileNotFoundError):  # closed, or the number was reused
            assert os.readlink(f"/proc/self/fd/{fd}") != pod_ns
    run(go())
