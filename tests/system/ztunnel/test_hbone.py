"""`inmesh ztunnel --controlplane` end to end: mesh pods talk over HBONE (mutual TLS on 15008,
the app's bytes never on the wire, the server app sees the client pod's IP), a second app
connection costs a stream and not a handshake, non-mesh destinations stay plaintext, and a
peer presenting the wrong identity is refused while other connections keep working."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from inmesh.controlplane.ca import CertificateAuthority
from inmesh.hbone import (
    ConnectRejected,
    HboneConnectionError,
    HbonePool,
    PoolKey,
    Target,
    UpstreamRefused,
    client_context,
    serve_hbone,
    server_context,
)
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle, generate_key, make_csr, private_key_pem
from inmesh.ztunnel.certs import GrpcCaClient, SystemClock
from tests.system.cpharness import ControlPlane, control_plane
from tests.system.nshelpers import NetnsFactory
from tests.system.ztunnel.meshlab import (
    CLIENT_ID,
    DB_ID,
    SERVER_ID,
    Capture,
    MeshLab,
    build_mesh_lab,
    register_pods,
    running_ztunnel,
)
from tests.system.ztunnel.podlab import (
    EchoServer,
    SocketMaker,
    echo_roundtrip,
    listen_in,
    read_all,
    run,
    until_http,
)
from tests.unit.hbone.certs import Authority
from tests.unit.hbone.helpers import RawH2

APP_PORT = 9000


def mtls(reporter: str, **more: str) -> dict[str, str]:
    return {"reporter": reporter, "connection_security_policy": "mutual_tls",
            "source_principal": CLIENT_ID, **more}


def test_mesh_pods_talk_over_hbone_and_others_in_plaintext(netns_factory: NetnsFactory,
                                                           tmp_path: Path) -> None:
    lab = build_mesh_lab(netns_factory)
    p1, p2, s = lab.ip(lab.p1), lab.ip(lab.p2), lab.ip(lab.s)
    secrets_sent = [f"hbone-secret-{secrets.token_hex(8)}".encode() for _ in range(2)]
    plain = f"plain-visible-{secrets.token_hex(8)}".encode()

    async def go(plane: ControlPlane) -> None:
        register_pods(plane, lab)
        plane.start()
        server = EchoServer(listen_in(lab.segment.path(lab.p2), p2, APP_PORT))
        outside = EchoServer(listen_in(lab.segment.path(lab.s), s, APP_PORT))
        app = SocketMaker(lab.segment.path(lab.p1))
        capture = Capture(lab, lab.p1, tmp_path / "p1.pcap")
        try:
            async with running_ztunnel(lab, plane) as zt:
                await capture.start()
                for payload in secrets_sent:  # two app connections to the same peer
                    sock = await app.connect(p2, APP_PORT)
                    assert await echo_roundtrip(sock, payload) == payload
                sock = await app.connect(s, APP_PORT)
                assert await echo_roundtrip(sock, plain) == plain
                await capture.wait_for(plain)  # the last packets sent are in the file
                pcap = await capture.stop()

                assert server.peers == [p1, p1]  # the app sees the client pod, not a proxy
                assert outside.peers == [p1]
                dump = await zt.config_dump()
                client = dump["workloadState"]["u1"]  # type: ignore[index]
                assert client["identity"] == CLIENT_ID
                assert client["certificate"]["state"] == "available"
                assert client["certificate"]["not_after"]
                assert client["hbone"]["dials"] == 1  # the second connection reused the first
                assert client["hbone"]["connections"] == 1
                assert dump["workloadState"]["u2"]["identity"] == SERVER_ID  # type: ignore[index]

                opened = "istio_tcp_connections_opened_total"
                assert await zt.metric(opened, **mtls("source", destination_principal=SERVER_ID,
                                                      destination_workload="server-0")) == 2
                assert await zt.metric(opened, **mtls("destination",
                                                      destination_principal=SERVER_ID,
                                                      source_workload="client-0")) == 2
                assert await zt.metric(opened, reporter="source", destination_service=s,
                                       connection_security_policy="unknown",
                                       source_principal="unknown") == 1
                await zt.until_metric(sum(len(p) for p in secrets_sent),
                                      "istio_tcp_received_bytes_total", **mtls("destination"))
        finally:
            await capture.stop()
            app.close()
            await server.close()
            await outside.close()

        # On the wire: one TCP handshake to 15008 for both tunnels, TLS only; the passthrough
        # connection's bytes are visible, the tunnelled ones never are.
        syns = capture.read(f"dst host {p2} and dst port 15008 and tcp[tcpflags] == tcp-syn")
        assert len(syns) == 1, syns
        assert capture.read(f"host {p2} and port {APP_PORT}") == []
        assert plain in pcap
        assert all(p not in pcap for p in secrets_sent)

    with control_plane() as plane:
        run(go(plane))


async def mesh_bundle(plane: ControlPlane, identity: SpiffeId) -> CertBundle:
    """A genuine mesh certificate for ``identity`` (the CA allows node-1 to hold it)."""
    key = generate_key()
    async with GrpcCaClient(plane.target, plane.credential("node-1")) as ca:
        chain = await ca.fetch(make_csr(key, identity), identity, 3600)
    return CertBundle.from_response(identity, private_key_pem(key), chain, SystemClock().now())


async def impostor(lab: MeshLab, bundle: CertBundle, accepted: list[str]) -> None:
    """Serve HBONE on X:15008 with ``bundle`` (not X's identity); refuse every CONNECT."""
    loop = asyncio.get_running_loop()
    ctx = server_context(bundle.cert_chain_pem, bundle.key_pem, bundle.roots_pem)
    listener = listen_in(lab.segment.path(lab.x), lab.ip(lab.x), 15008)

    async def refuse(_: object) -> socket.socket:
        raise UpstreamRefused("an impostor never connects anything")

    async with asyncio.TaskGroup() as tasks:
        try:
            while True:
                conn, peer = await loop.sock_accept(listener)
                accepted.append(peer[0])
                tasks.create_task(serve_hbone(conn, ctx, [lab.ip(lab.x)], "cluster.local",
                                              refuse))
        finally:
            listener.close()


def test_a_peer_with_the_wrong_identity_is_refused_and_others_keep_working(
        netns_factory: NetnsFactory) -> None:
    lab = build_mesh_lab(netns_factory)
    p2, x = lab.ip(lab.p2), lab.ip(lab.x)

    async def go(plane: ControlPlane) -> None:
        register_pods(plane, lab)
        plane.start()
        loop = asyncio.get_running_loop()
        accepted: list[str] = []
        fake = loop.create_task(impostor(lab, await mesh_bundle(
            plane, SpiffeId.parse(SERVER_ID)), accepted))
        server = EchoServer(listen_in(lab.segment.path(lab.p2), p2, APP_PORT))
        app = SocketMaker(lab.segment.path(lab.p1))
        try:
            async with running_ztunnel(lab, plane) as zt:
                live = await app.connect(p2, APP_PORT)  # open across the refusal
                await loop.sock_sendall(live, b"first half ")

                victim = await app.connect(x, APP_PORT)
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    await echo_roundtrip(victim, b"for db only")
                assert accepted == [lab.ip(lab.p1)]  # it was reached, then refused by us

                await loop.sock_sendall(live, b"second half")
                assert await echo_roundtrip(live, b"!") == b"first half second half!"
                sock = await app.connect(p2, APP_PORT)
                assert await echo_roundtrip(sock, b"still fine") == b"still fine"

                failed = await zt.metric("istio_tcp_connections_failed_total",
                                         **mtls("source", destination_principal=DB_ID,
                                                response_flags="TLS_FAILURE"))
                assert failed == 1
                assert await zt.metric("istio_tcp_connections_opened_total",
                                       **mtls("source", destination_principal=SERVER_ID)) == 2
        finally:
            fake.cancel()
            await asyncio.gather(fake, return_exceptions=True)
            app.close()
            await server.close()

    with control_plane() as plane:
        run(go(plane))


def test_no_pod_is_served_before_the_first_xds_state(netns_factory: NetnsFactory) -> None:
    """Otherwise a connection to a mesh pod would leave in plaintext (Istio does the same)."""
    lab = build_mesh_lab(netns_factory)
    p2 = lab.ip(lab.p2)

    async def go(plane: ControlPlane) -> None:
        register_pods(plane, lab)
        plane.credential("node-1")  # creates the authorities; the control plane is not up
        server = EchoServer(listen_in(lab.segment.path(lab.p2), p2, APP_PORT))
        app = SocketMaker(lab.segment.path(lab.p1))
        try:
            async with running_ztunnel(lab, plane, ready=False) as zt:
                body = await until_http(zt.admin, 15021, "/healthz/ready", 500)
                assert body == b"not ready, pending: xds sync, zds connection\n"
                assert zt.zds.connection_count == 0
                plane.start()
                assert await until_http(zt.admin, 15021, "/healthz/ready", 200) == b"ready\n"
                assert zt.zds.connection_count == 1
                sock = await app.connect(p2, APP_PORT)
                assert await echo_roundtrip(sock, b"after sync") == b"after sync"
                dump = await zt.config_dump()
                assert dump["mesh"]["xds"]["synced"] is True  # type: ignore[index]
                assert await zt.metric("istio_tcp_connections_opened_total",
                                       **mtls("source", destination_principal=SERVER_ID)) == 1
        finally:
            app.close()
            await server.close()

    with control_plane() as plane:
        run(go(plane))


def expired_mesh_credential(plane: ControlPlane, identity: SpiffeId) -> ssl.SSLContext:
    """A client context with a certificate from the mesh root that expired yesterday."""
    now = [datetime.now(UTC)]
    ca = CertificateAuthority.load_or_create(plane.state, "cluster.local", clock=lambda: now[0])
    now[0] -= timedelta(days=2)  # sign as if it were two days ago
    key = generate_key()
    chain = ca.sign(make_csr(key, identity), identity, 3600)
    return client_context("".join(chain[:-1]).encode(), private_key_pem(key), ca.root_pem)


def test_the_pods_hbone_port_refuses_bad_peers_and_keeps_serving(
        netns_factory: NetnsFactory) -> None:
    """A rogue peer in a netns of its own dials P2:15008 directly; each refusal is the right
    status or alert, and mesh traffic through the same proxy keeps flowing."""
    lab = build_mesh_lab(netns_factory)
    p1, p2, x = lab.ip(lab.p1), lab.ip(lab.p2), lab.ip(lab.x)
    hbone = Target(p2, 15008)

    async def go(plane: ControlPlane) -> None:
        register_pods(plane, lab)
        plane.start()
        loop = asyncio.get_running_loop()
        client_id = SpiffeId.parse(CLIENT_ID)
        good = await mesh_bundle(plane, client_id)
        good_ctx = client_context(good.cert_chain_pem, good.key_pem, good.roots_pem)
        foreign = Authority.create("foreign root").issue(CLIENT_ID, roots=good.roots_pem)
        no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        no_cert.check_hostname = False
        no_cert.set_alpn_protocols(["h2"])
        no_cert.load_verify_locations(cadata=good.roots_pem.decode())
        server = EchoServer(listen_in(lab.segment.path(lab.p2), p2, APP_PORT))
        app, rogue = SocketMaker(lab.segment.path(lab.p1)), SocketMaker(lab.segment.path(lab.x))
        pool = HbonePool()

        async def dial(ctx: ssl.SSLContext, authority: str) -> int:
            """Open one tunnel from X with ``ctx``: its CONNECT status (200: echo checked)."""
            key = PoolKey(client_id, SpiffeId.parse(SERVER_ID), x, hbone)
            stream = await pool.open(key, lambda: rogue.connect(p2, 15008), ctx,
                                     [SpiffeId.parse(SERVER_ID)], authority)
            await stream.write(b"rogue but valid")
            stream.close_write()
            chunks = []
            while data := await stream.read():
                chunks.append(data)
                stream.acknowledge(len(data))
            assert b"".join(chunks) == b"rogue but valid"
            return 200

        try:
            async with running_ztunnel(lab, plane) as zt:
                live = await app.connect(p2, APP_PORT)
                await loop.sock_sendall(live, b"before ")

                for ctx in (no_cert, client_context(foreign.chain_pem, foreign.key_pem,
                                                    foreign.roots_pem),
                            expired_mesh_credential(plane, client_id)):
                    with pytest.raises(HboneConnectionError):
                        await dial(ctx, f"{p2}:{APP_PORT}")
                garbage = await rogue.connect(p2, 15008)
                with garbage:
                    await loop.sock_sendall(garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    with contextlib.suppress(ConnectionResetError):
                        assert not (await read_all(garbage)).startswith(b"HTTP")
                for authority, status in ((f"{p1}:{APP_PORT}", 400), (f"{p2}:15001", 400),
                                          (f"{p2}:{APP_PORT + 1}", 503)):
                    with pytest.raises(ConnectRejected) as refused:
                        await dial(good_ctx, authority)
                    assert refused.value.status == status, authority
                assert await non_connect_status(rogue, hbone, good_ctx) == 400
                assert server.peers == [p1]  # only the live connection reached the app

                assert await dial(good_ctx, f"{p2}:{APP_PORT}") == 200
                assert server.peers == [p1, x]  # delivered from the peer's own IP
                assert pool.dials == 4  # three refused handshakes, one connection for the rest
                await loop.sock_sendall(live, b"after")
                assert await echo_roundtrip(live, b"!") == b"before after!"
                assert await zt.metric("istio_tcp_connections_failed_total",
                                       reporter="destination", response_flags="CONNECT",
                                       destination_principal=SERVER_ID) == 1  # the 503
        finally:
            await pool.close()
            app.close()
            rogue.close()
            await server.close()

    with control_plane() as plane:
        run(go(plane))


async def non_connect_status(rogue: SocketMaker, hbone: Target, ctx: ssl.SSLContext) -> int:
    """The status a plain GET stream gets from the pod's HBONE port."""
    sock = await rogue.connect(hbone.ip, hbone.port)
    reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="")
    raw = RawH2(reader, writer)
    await raw.flush()
    try:
        sid = await raw.request([(":method", "GET"), (":scheme", "https"), (":path", "/"),
                                 (":authority", str(hbone))], end_stream=True)
        return await raw.status(sid)
    finally:
        await raw.close()
