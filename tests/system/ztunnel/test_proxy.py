"""PodProxy in real namespaces: outbound and inbound traffic really goes through the proxy,
with the right source addresses, half-close and metrics; drained means fail closed."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from inmesh import netns
from inmesh.errors import KernelError
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel import sockets
from inmesh.ztunnel.metrics import ZtunnelMetrics
from inmesh.ztunnel.proxy import PodProxy
from inmesh.ztunnel.settings import ProxySettings
from tests.system.nshelpers import NetnsFactory
from tests.system.ztunnel.podlab import (
    EchoServer,
    PodLab,
    SocketMaker,
    build_pod_lab,
    echo_roundtrip,
    listen_in,
    read_all,
    run,
    wait_for,
)

INFO = WorkloadInfo("app-0", "shop", "app")


async def start_proxy(lab: PodLab, metrics: ZtunnelMetrics,
                      settings: ProxySettings | None = None) -> PodProxy:
    fd = netns.open_netns(lab.pod_path)
    try:
        proxy = PodProxy("uid-1", INFO, fd, settings or ProxySettings(), metrics)
        await proxy.start()
    finally:
        os.close(fd)  # borrowed only while starting
    return proxy


def sample(metrics: ZtunnelMetrics, name: str, **labels: str) -> float:
    """Sum of a counter over every series matching ``labels``."""
    total = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_outbound_goes_through_the_proxy_from_the_pod_ip(netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        metrics = ZtunnelMetrics()
        server = EchoServer(listen_in(lab.server_path, lab.server_ip, 9000))
        app = SocketMaker(lab.pod_path)
        proxy = await start_proxy(lab, metrics)
        try:
            payload = os.urandom(1 << 20)
            sock = await app.connect(lab.server_ip, 9000)
            assert await echo_roundtrip(sock, payload) == payload  # needs half-close relayed
            assert server.peers == [lab.pod_ip]  # upstream left from the pod's own IP
            await wait_for(lambda: sample(metrics, "istio_tcp_connections_closed_total") == 1)
            labels = {"reporter": "source", "source_workload": "app-0",
                      "source_workload_namespace": "shop", "destination_service": lab.server_ip,
                      "request_protocol": "tcp", "connection_security_policy": "unknown"}
            assert sample(metrics, "istio_tcp_connections_opened_total", **labels) == 1
            assert sample(metrics, "istio_tcp_received_bytes_total", **labels) == len(payload)
            assert sample(metrics, "istio_tcp_sent_bytes_total", **labels) == len(payload)
        finally:
            await proxy.drain(None)
            app.close()
            await server.close()
    run(go())


def test_inbound_is_delivered_from_the_client_ip(netns_factory: NetnsFactory) -> None:
    """The app in the pod sees the real client address (transparent "freebind connect")."""
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        metrics = ZtunnelMetrics()
        app = EchoServer(listen_in(lab.pod_path, "0.0.0.0", 8080))
        client = SocketMaker(lab.server_path)
        proxy = await start_proxy(lab, metrics)
        try:
            payload = os.urandom(300_000)
            sock = await client.connect(lab.pod_ip, 8080)
            assert await echo_roundtrip(sock, payload) == payload
            assert app.peers == [lab.server_ip]
            await wait_for(lambda: sample(metrics, "istio_tcp_connections_closed_total") == 1)
            labels = {"reporter": "destination", "destination_workload": "app-0",
                      "destination_workload_namespace": "shop"}
            assert sample(metrics, "istio_tcp_connections_opened_total", **labels) == 1
            assert sample(metrics, "istio_tcp_received_bytes_total", **labels) == len(payload)
        finally:
            await proxy.drain(None)
            client.close()
            await app.close()
    run(go())


def test_ipv6_outbound_and_transparent_inbound(netns_factory: NetnsFactory) -> None:
    """The dual-stack listeners serve IPv6 too: IP6T_SO_ORIGINAL_DST and IPV6_TRANSPARENT."""
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        metrics = ZtunnelMetrics()
        server = EchoServer(listen_in(lab.server_path, "::", 9000))
        app = EchoServer(listen_in(lab.pod_path, "::", 8080))
        in_pod, outside = SocketMaker(lab.pod_path), SocketMaker(lab.server_path)
        proxy = await start_proxy(lab, metrics)
        try:
            sock = await in_pod.connect(lab.server_ip6, 9000)
            assert await echo_roundtrip(sock, b"out6") == b"out6"
            sock = await outside.connect(lab.pod_ip6, 8080)
            assert await echo_roundtrip(sock, b"in6") == b"in6"
            assert server.peers == [lab.pod_ip6]
            assert app.peers == [lab.server_ip6]
            await wait_for(lambda: sample(metrics, "istio_tcp_connections_closed_total") == 2)
            assert sample(metrics, "istio_tcp_connections_opened_total",
                          destination_service=lab.server_ip6) == 1
            assert sample(metrics, "istio_tcp_connections_opened_total",
                          destination_service=lab.pod_ip6) == 1
        finally:
            await proxy.drain(None)
            in_pod.close()
            outside.close()
            await server.close()
            await app.close()
    run(go())


def test_drained_proxy_fails_closed_both_ways(netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        metrics = ZtunnelMetrics()
        server_sock = listen_in(lab.server_path, lab.server_ip, 9000)
        app_listener = listen_in(lab.pod_path, "0.0.0.0", 8080)
        app, client = SocketMaker(lab.pod_path), SocketMaker(lab.server_path)
        proxy = await start_proxy(lab, metrics)
        try:
            await proxy.drain(None)
            with pytest.raises(ConnectionRefusedError):
                await app.connect(lab.server_ip, 9000)
            with pytest.raises(ConnectionRefusedError):
                await client.connect(lab.pod_ip, 8080)
            for listener in (server_sock, app_listener):  # nothing bypassed the proxy
                with pytest.raises(BlockingIOError):
                    listener.accept()
        finally:
            app.close()
            client.close()
            server_sock.close()
            app_listener.close()
    run(go())


def test_connections_to_the_proxy_ports_themselves_are_refused(
        netns_factory: NetnsFactory) -> None:
    """An app dialing 15001 directly (no NAT, so no original destination) must not loop."""
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        metrics = ZtunnelMetrics()
        app, client = SocketMaker(lab.pod_path), SocketMaker(lab.server_path)
        proxy = await start_proxy(lab, metrics)
        try:
            sock = await app.connect(lab.pod_ip, 15001)
            with sock, pytest.raises(ConnectionResetError):
                await read_all(sock)
            sock = await client.connect(lab.pod_ip, 15001)  # redirected to 15006: refused too
            with sock, pytest.raises(ConnectionResetError):
                await read_all(sock)
            assert sample(metrics, "istio_tcp_connections_opened_total") == 0
        finally:
            await proxy.drain(None)
            app.close()
            client.close()
    run(go())


def test_failed_upstream_connect_closes_only_that_connection(
        netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        metrics = ZtunnelMetrics()
        server = EchoServer(listen_in(lab.server_path, lab.server_ip, 9000))
        app = SocketMaker(lab.pod_path)
        proxy = await start_proxy(lab, metrics)
        try:
            sock = await app.connect(lab.server_ip, 9001)  # nobody listens there
            with sock, pytest.raises(ConnectionResetError):
                await read_all(sock)
            assert sample(metrics, "istio_tcp_connections_failed_total",
                          response_flags="CONNECT") == 1
            sock = await app.connect(lab.server_ip, 9000)  # the proxy still works
            assert await echo_roundtrip(sock, b"still here") == b"still here"
        finally:
            await proxy.drain(None)
            app.close()
            await server.close()
    run(go())


def test_graceful_drain_keeps_live_connections_until_the_deadline(
        netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        metrics = ZtunnelMetrics()
        # A server that answers each chunk at once (a live, chatty connection).
        listener = listen_in(lab.server_path, lab.server_ip, 9000)
        app = SocketMaker(lab.pod_path)
        proxy = await start_proxy(lab, metrics)
        try:
            sock = await app.connect(lab.server_ip, 9000)
            peer, _ = await loop.sock_accept(listener)
            peer.setblocking(False)
            drain = loop.create_task(proxy.drain(loop.time() + 0.5))
            with pytest.raises(ConnectionRefusedError):  # listeners closed at once
                await app.connect(lab.server_ip, 9000)
            await loop.sock_sendall(sock, b"ping")  # the live connection still flows
            assert await loop.sock_recv(peer, 4) == b"ping"
            await drain  # the deadline passes: what is left is reset
            with pytest.raises(ConnectionResetError):
                await read_all(sock)
            with pytest.raises(ConnectionResetError):
                await read_all(peer)
            sock.close()
            peer.close()
            assert sample(metrics, "istio_tcp_connections_closed_total") == 1
            assert sample(metrics, "istio_tcp_received_bytes_total") == 4
        finally:
            await proxy.drain(None)
            app.close()
            listener.close()
    run(go())


def test_listeners_fall_back_to_ipv4_without_ipv6(netns_factory: NetnsFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without IPv6 (EAFNOSUPPORT) still gets working 0.0.0.0 listeners."""
    real = sockets._bind_listener

    def no_v6(family: int, host: str, port: int, settings: ProxySettings) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, host, port, settings)

    monkeypatch.setattr(sockets, "_bind_listener", no_v6)
    lab = build_pod_lab(netns_factory)

    async def go() -> None:
        made = netns.run_in_netns(
            lab.pod_path, lambda: sockets.make_listeners((15001,), ProxySettings(), "t"))
        try:
            assert [s.family for s in made] == [socket.AF_INET]
            assert made[0].getsockname() == ("0.0.0.0", 15001)
            assert made[0].getsockopt(socket.SOL_SOCKET, sockets.SO_MARK) == 0x539
        finally:
            for s in made:
                s.close()
    run(go())


def test_listeners_are_dual_stack_marked_and_reuseport(netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)
    made = netns.run_in_netns(
        lab.pod_path, lambda: sockets.make_listeners((15001, 15006), ProxySettings(), "t"))
    try:
        for s in made:
            assert s.family == socket.AF_INET6
            assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            assert s.getsockopt(socket.SOL_SOCKET, sockets.SO_MARK) == 0x539
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert s.getsockopt(sockets.SOL_IP, sockets.IP_TRANSPARENT) == 1
    finally:
        for s in made:
            s.close()


def test_a_port_taken_by_the_app_fails_the_whole_set(netns_factory: NetnsFactory) -> None:
    lab = build_pod_lab(netns_factory)

    def attempt() -> str:
        squatter = socket.socket(socket.AF_INET6)
        squatter.bind(("::", 15006))  # no SO_REUSEPORT: nobody else may bind it
        try:
            sockets.make_listeners((15001, 15006), ProxySettings(), "shop/app-0")
        except KernelError as exc:
            with socket.socket(socket.AF_INET6) as probe:  # 15001 was released again
                probe.bind(("::", 15001))
            return str(exc)
        finally:
            squatter.close()
        raise AssertionError("bind should have failed")

    message = netns.run_in_netns(lab.pod_path, attempt)
    assert "shop/app-0" in message
    assert "15006" in message
    assert "in use" in message
