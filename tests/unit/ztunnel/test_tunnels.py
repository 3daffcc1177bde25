"""One pod's HBONE glue, client pod against server pod over loopback with a real CA: tunnels
carry bytes both ways with mutual TLS, share one pooled connection, and each failure (wrong
server identity, no certificate, refused upstream) resets only its app connection and is
counted with its response flag."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inmesh.identity import SpiffeId
from inmesh.xds.proto import workload_pb2
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.addressing import Endpoint
from inmesh.ztunnel.mesh import Mesh
from inmesh.ztunnel.metrics import ZtunnelMetrics
from inmesh.ztunnel.routing import HboneRoute
from inmesh.ztunnel.settings import ProxySettings
from inmesh.ztunnel.tunnels import PodTunnels
from inmesh.ztunnel.workloads import WorkloadTable
from tests.unit.ztunnel.fakes import FakeCerts, run, wait_for

LO = "127.0.0.1"
WEB = WorkloadInfo("web-0", "shop", "web")
DB = WorkloadInfo("db-0", "shop", "db")
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"
DB_ID = "spiffe://cluster.local/ns/shop/sa/db"


class LoopbackSockets:
    """`TunnelSockets` over loopback: the HBONE port is wherever ``hbone_port`` says."""

    def __init__(self) -> None:
        self.hbone_port = 0

    async def upstream(self, dst: Endpoint) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        port = self.hbone_port if dst.port == 15008 else dst.port
        try:
            await asyncio.get_running_loop().sock_connect(sock, (dst.ip, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def transparent_upstream(self, src_ip: str, dst: Endpoint) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        return sock


async def read_all(sock: socket.socket) -> bytes:
    loop, chunks = asyncio.get_running_loop(), []
    while data := await loop.sock_recv(sock, 65536):
        chunks.append(data)
    return b"".join(chunks)


async def echo_app(listener: socket.socket) -> None:
    """Per connection: read to EOF, echo it all, close."""
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tasks:
        while True:
            conn, _ = await loop.sock_accept(listener)

            async def serve(conn: socket.socket = conn) -> None:
                with conn:
                    conn.setblocking(False)
                    await loop.sock_sendall(conn, await read_all(conn))
            tasks.create_task(serve())


@dataclass
class Pods:
    """A client pod (web-0) and a server pod (db-0 with an echo app), one mesh between them."""

    client: PodTunnels
    server: PodTunnels
    certs: FakeCerts
    metrics: ZtunnelMetrics
    table: WorkloadTable
    app_port: int
    closed_port: int

    def route(self, port: int | None = None) -> HboneRoute:
        mesh_route = Mesh(self.table, self.certs, node="n1", trust_domain="cluster.local").route(
            Endpoint(LO, port or self.app_port))
        assert isinstance(mesh_route, HboneRoute)
        return mesh_route

    async def tunnel(self, payload: bytes, port: int | None = None) -> bytes:
        """An app connection through the client pod's outbound tunnel: send, half-close,
        read everything back (raises ConnectionResetError if the proxy reset it)."""
        loop = asyncio.get_running_loop()
        app, proxy_side = await _tcp_pair()
        task = loop.create_task(self.client.outbound(proxy_side, self.route(port)))
        try:
            with app:
                await loop.sock_sendall(app, payload)
                app.shutdown(socket.SHUT_WR)
                return await read_all(app)
        finally:
            await task

    def sample(self, name: str, **labels: str) -> float:
        return sum(s.value for fam in self.metrics.registry.collect() for s in fam.samples
                   if s.name == name and labels.items() <= s.labels.items())


async def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    with socket.create_server((LO, 0)) as lsn:
        lsn.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(lsn))
        await loop.sock_connect(client, lsn.getsockname())
        server, _ = await accept
        return client, server


@contextlib.asynccontextmanager
async def pods(tmp_path: Path, server_info: WorkloadInfo = DB) -> AsyncIterator[Pods]:
    loop = asyncio.get_running_loop()
    certs, metrics = FakeCerts(tmp_path / "ca"), ZtunnelMetrics()
    table = WorkloadTable()
    table.apply({"c//Pod/shop/db-0": _db_entry_body()}, ())
    mesh = Mesh(table, certs, node="n1", trust_domain="cluster.local")
    sockets = LoopbackSockets()
    settings = ProxySettings(connect_timeout=5)
    client = PodTunnels("shop/web-0", WEB, mesh, sockets, settings, metrics)
    server = PodTunnels(f"shop/{server_info.name}", server_info, mesh, sockets, settings, metrics)
    hbone = socket.create_server((LO, 0))
    app = socket.create_server((LO, 0))
    closed = socket.create_server((LO, 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connecting is refused
    for lsn in (hbone, app):
        lsn.setblocking(False)
    sockets.hbone_port = hbone.getsockname()[1]

    pods = Pods(client, server, certs, metrics, table, app.getsockname()[1], closed_port)

    async def accept_hbone() -> None:
        async with asyncio.TaskGroup() as tasks:
            while True:
                conn, _ = await loop.sock_accept(hbone)
                tasks.create_task(pods.server.inbound(conn))  # the server at accept time

    tasks = [loop.create_task(accept_hbone()), loop.create_task(echo_app(app))]
    try:
        yield pods
    finally:
        await client.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hbone.close()
        app.close()


def _db_entry_body() -> bytes:
    """db-0: a mesh (HBONE) workload at 127.0.0.1, identity cluster.local/ns/shop/sa/db."""
    w = workload_pb2.Workload(uid="c//Pod/shop/db-0", name="db-0", namespace="shop",
                              service_account="db", node="n1",
                              addresses=[socket.inet_aton(LO)], tunnel_protocol=workload_pb2.HBONE)
    return workload_pb2.Address(workload=w).SerializeToString()


def mtls(reporter: str, **more: str) -> dict[str, str]:
    return {"reporter": reporter, "connection_security_policy": "mutual_tls",
            "source_principal": WEB_ID, "destination_principal": DB_ID, **more}


def test_tunnels_carry_bytes_with_mutual_tls_over_one_pooled_connection(tmp_path: Path) -> None:
    async def go() -> None:
        async with pods(tmp_path) as p:
            assert await p.tunnel(b"hello db") == b"hello db"
            big = bytes(range(256)) * 4096
            assert await p.tunnel(big) == big
            assert p.client.pool.dials == 1  # the second tunnel was a stream, not a handshake
            assert p.client.dump() == {"dials": 1, "connections": 1, "refusedRetries": 0,
                                       "inboundStreams": 0}
            opened = "istio_tcp_connections_opened_total"
            assert p.sample(opened, **mtls("source", destination_workload="db-0",
                                           source_workload="web-0")) == 2
            await wait_for(lambda: p.sample("istio_tcp_connections_closed_total",
                                            **mtls("destination")) == 2)
            assert p.sample(opened, **mtls("destination", destination_workload="db-0")) == 2
            sent = len(b"hello db") + len(big)
            for reporter in ("source", "destination"):
                assert p.sample("istio_tcp_received_bytes_total", **mtls(reporter)) == sent
                assert p.sample("istio_tcp_sent_bytes_total", **mtls(reporter)) == sent

    run(go())


def test_a_server_with_another_identity_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        # The pod at the destination IP presents shop/cache, but xDS says shop/db lives there.
        async with pods(tmp_path, WorkloadInfo("cache-0", "shop", "cache")) as p:
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await p.tunnel(b"secret for db")
            assert p.sample("istio_tcp_connections_failed_total",
                            **mtls("source", response_flags="TLS_FAILURE")) == 1
            assert p.client.pool.connections() == 0

    run(go())


def test_no_source_certificate_is_an_identity_error(tmp_path: Path) -> None:
    async def go() -> None:
        async with pods(tmp_path) as p:
            p.certs.refuse.add(SpiffeId.parse(WEB_ID))
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await p.tunnel(b"x")
            assert p.sample("istio_tcp_connections_failed_total",
                            reporter="source", response_flags="IDENTITY_ERROR",
                            destination_principal=DB_ID) == 1
            assert p.client.pool.dials == 0

    run(go())


def test_a_refused_upstream_is_503_then_a_reset_and_the_pool_keeps_serving(
        tmp_path: Path) -> None:
    async def go() -> None:
        async with pods(tmp_path) as p:
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await p.tunnel(b"x", port=p.closed_port)
            assert p.sample("istio_tcp_connections_failed_total",
                            **mtls("source", response_flags="CONNECT")) == 1
            assert p.sample("istio_tcp_connections_failed_total",
                            **mtls("destination", response_flags="CONNECT")) == 1
            assert await p.tunnel(b"after") == b"after"
            assert p.client.pool.dials == 1

    run(go())


def test_a_server_pod_without_its_certificate_resets_inbound_connections(
        tmp_path: Path) -> None:
    async def go() -> None:
        async with pods(tmp_path) as p:
            p.certs.refuse.add(SpiffeId.parse(DB_ID))
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await p.tunnel(b"x")
            assert p.sample("istio_tcp_connections_failed_total", reporter="destination",
                            response_flags="IDENTITY_ERROR", destination_workload="db-0") == 1

    run(go())


def test_a_draining_pod_finishes_its_tunnels_while_new_ones_take_a_new_connection(
        tmp_path: Path) -> None:
    """The server pod's proxy drains (ztunnel handing over): its HBONE connections send
    GOAWAY, so the next tunnel dials a new connection (the successor's listener, in real
    life), and the tunnel in flight finishes over the old one."""

    async def go() -> None:
        async with pods(tmp_path) as p:
            loop = asyncio.get_running_loop()
            app, proxy_side = await _tcp_pair()
            long = loop.create_task(p.client.outbound(proxy_side, p.route()))
            with app:
                await loop.sock_sendall(app, b"before ")
                await wait_for(lambda: p.sample("istio_tcp_connections_opened_total",
                                                **mtls("destination")) == 1)
                leaving = p.server
                p.server = PodTunnels("shop/db-0", DB, leaving._mesh, LoopbackSockets(),
                                      ProxySettings(connect_timeout=5), p.metrics)  # successor
                leaving.start_drain()  # (its listener would close: the successor's serves)
                assert await p.tunnel(b"new") == b"new"
                assert p.client.pool.dials == 2
                await loop.sock_sendall(app, b"and after the drain")
                app.shutdown(socket.SHUT_WR)
                assert await read_all(app) == b"before and after the drain"
            await long
            await wait_for(lambda: p.client.pool.connections() == 1)  # the drained one closed

    run(go())


def test_handing_inbound_back_moves_pooled_connections_and_keeps_serving(
        tmp_path: Path) -> None:
    """ztunnel served the pod's 15008 while its inbound worker was away; once the worker is
    back, the connections accepted meanwhile send GOAWAY (peers dial again, now to the
    worker), and later connections are served as usual, not drained."""

    async def go() -> None:
        async with pods(tmp_path) as p:
            assert await p.tunnel(b"one") == b"one"
            assert p.client.pool.connections() == 1
            p.server.hand_back_inbound()
            await wait_for(lambda: p.client.pool.connections() == 0)  # no tunnel: it closed
            assert await p.tunnel(b"two") == b"two"
            assert await p.tunnel(b"three") == b"three"
            assert p.client.pool.dials == 2  # the second connection stays pooled
            assert p.client.pool.connections() == 1
            p.server.start_drain()
            p.server.hand_back_inbound()  # leaving: a no-op, later connections drain too
            await wait_for(lambda: p.client.pool.connections() == 0)

    run(go())
