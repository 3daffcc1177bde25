"""Every way an HBONE connection or stream is refused, each on its own, and each time another
connection (or stream) through the same server still works afterwards."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from inmesh.hbone import (
    ConnectRejected,
    ConnectRequest,
    HboneConnectionError,
    HboneSettings,
    PeerIdentityError,
    UpstreamRefused,
)

from .helpers import (
    LOCAL_IP,
    OTHER_ID,
    SERVER_ID,
    Pki,
    RawH2,
    Rig,
    Target,
    echo_roundtrip,
    eventually,
    open_stream,
    pool,
    rig,
    run,
)


async def still_serves(r: Rig, pki: Pki) -> None:
    """A fresh pool (a new TLS connection) through the same server still tunnels bytes."""
    async with pool() as p:
        assert await echo_roundtrip(p, r, pki, b"still here") == b"still here"


def _refused_client(pki: Pki, ctx: ssl.SSLContext) -> None:
    async def go() -> None:
        async with rig(pki) as r:
            async with pool() as p:
                with pytest.raises(HboneConnectionError):
                    await open_stream(p, r, pki, ctx=ctx)
            assert r.requests == []  # nothing reached the upstream
            await still_serves(r, pki)
    run(go())


def test_client_without_a_certificate_is_refused(pki: Pki) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    ctx.load_verify_locations(cadata=pki.root.cert_pem.decode())
    _refused_client(pki, ctx)


def test_client_certificate_from_another_root_is_refused(pki: Pki) -> None:
    _refused_client(pki, pki.client_ctx(pki.foreign_client))


def test_expired_client_certificate_is_refused(pki: Pki) -> None:
    _refused_client(pki, pki.client_ctx(pki.expired_client))


def test_client_from_another_trust_domain_is_refused(pki: Pki) -> None:
    _refused_client(pki, pki.client_ctx(pki.other_domain_client))


def test_client_without_alpn_h2_is_refused(pki: Pki) -> None:
    ctx = pki.client_ctx()
    ctx.set_alpn_protocols(["http/1.1"])

    async def go() -> None:
        async with rig(pki) as r:
            # OpenSSL completes the handshake without ALPN; the server then drops it.
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _connect_and_request(r, ctx)
            assert r.requests == []
            await still_serves(r, pki)
    run(go())


async def _connect_and_request(r: Rig, ctx: ssl.SSLContext) -> int:
    raw = await RawH2.connect(r.hbone, ctx)
    try:
        return await raw.status(await raw.request([(":method", "CONNECT"),
                                                   (":authority", str(r.app))]))
    finally:
        await raw.close()


def test_client_refuses_a_server_with_the_wrong_identity(pki: Pki) -> None:
    async def go() -> None:
        async with rig(pki, server_ctx=pki.server_ctx(pki.other_server)) as r, pool() as p:
            with pytest.raises(PeerIdentityError, match=r"expected spiffe://cluster\.local/ns/shop/sa/db"):
                await open_stream(p, r, pki, expected=SERVER_ID)
            assert p.connections() == 0
            assert r.requests == []
            # Expecting the identity it does have works through the same server.
            stream = await open_stream(p, r, pki, expected=OTHER_ID, key=r.key(dest=OTHER_ID))
            assert stream.peer_identity == OTHER_ID
            stream.reset()
    run(go())


def test_client_refuses_a_server_from_another_root(pki: Pki) -> None:
    foreign_server = pki.foreign_root.issue(SERVER_ID.uri, roots=pki.root.cert_pem)

    async def go() -> None:
        async with rig(pki, server_ctx=pki.server_ctx(foreign_server)) as r, pool() as p:
            with pytest.raises(HboneConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await open_stream(p, r, pki)
    run(go())


def test_non_connect_stream_gets_400_and_the_connection_lives_on(pki: Pki) -> None:
    async def go() -> None:
        async with rig(pki) as r:
            raw = await RawH2.connect(r.hbone, pki.client_ctx())
            get = await raw.request([(":method", "GET"), (":scheme", "https"), (":path", "/"),
                                     (":authority", str(r.app))], end_stream=True)
            assert await raw.status(get) == 400
            # A good CONNECT on the very same connection still works.
            ok = await raw.request([(":method", "CONNECT"), (":authority", str(r.app))])
            assert await raw.status(ok) == 200
            await raw.close()
            assert r.accepted == 1
            await still_serves(r, pki)
    run(go())


def _rejected(pki: Pki, target: str, status: int, **rig_args: object) -> None:
    async def go() -> None:
        async with rig(pki, **rig_args) as r, pool() as p:  # type: ignore[arg-type]
            with pytest.raises(ConnectRejected) as info:
                await open_stream(p, r, pki, target=target.format(app=r.app.port))
            assert info.value.status == status
            # The same connection carries the next stream.
            assert await echo_roundtrip(p, r, pki) == b"ping"
            assert (p.dials, r.accepted) == (1, 1)
            await eventually(lambda: len(r.done) >= 1)
    run(go())


def test_connect_to_another_ip_gets_400(pki: Pki) -> None:
    _rejected(pki, "127.0.0.2:{app}", 400)


@pytest.mark.parametrize("port", ["0", "15001", "15006", "15008", "65536"])
def test_connect_to_an_illegal_port_gets_400(pki: Pki, port: str) -> None:
    _rejected(pki, f"{LOCAL_IP}:{port}", 400)


def test_connect_to_a_hostname_gets_400(pki: Pki) -> None:
    _rejected(pki, "db.shop.svc.cluster.local:{app}", 400)


def test_upstream_refused_gets_503(pki: Pki) -> None:
    with socket.socket() as unused:
        unused.bind((LOCAL_IP, 0))  # bound, never listening: connect is refused
        closed_port = unused.getsockname()[1]

        async def go() -> None:
            async with rig(pki) as r, pool() as p:
                with pytest.raises(ConnectRejected) as info:
                    await open_stream(p, r, pki, target=Target(LOCAL_IP, closed_port))
                assert info.value.status == 503
                await eventually(lambda: len(r.done) == 1)
                assert r.done[0].status == 503
                assert await echo_roundtrip(p, r, pki) == b"ping"
                assert r.accepted == 1
        run(go())


def test_upstream_policy_refusal_gets_its_status(pki: Pki) -> None:
    async def deny_first(request: ConnectRequest) -> socket.socket:
        if request.stream_id == 1:
            raise UpstreamRefused("denied by policy", status=401)
        return socket.socket()

    async def go() -> None:
        async with rig(pki, open_upstream=deny_first) as r, pool() as p:
            with pytest.raises(ConnectRejected) as info:
                await open_stream(p, r, pki)
            assert info.value.status == 401
            assert await echo_roundtrip(p, r, pki) == b"ping"
    run(go())


def test_a_bug_in_open_upstream_resets_only_that_stream(pki: Pki) -> None:
    async def buggy_first(request: ConnectRequest) -> socket.socket:
        if request.stream_id == 1:
            raise ValueError("bug")
        return socket.socket()

    async def go() -> None:
        async with rig(pki, open_upstream=buggy_first) as r, pool() as p:
            with pytest.raises(HboneConnectionError, match="INTERNAL_ERROR"):
                await open_stream(p, r, pki)
            assert await echo_roundtrip(p, r, pki) == b"ping"
            assert r.done[0].status == 500
    run(go())


def test_garbage_instead_of_tls_closes_only_that_connection(pki: Pki) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with rig(pki) as r:
            with socket.socket() as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, (r.hbone.ip, r.hbone.port))
                await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    rest = await loop.sock_recv(sock, 1024)
                except ConnectionResetError:
                    rest = b""
                assert not rest.startswith(b"HTTP")  # nothing but a TLS alert, then close
                await eventually(lambda: _closed(sock))
            await still_serves(r, pki)
    run(go())


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_one_refused_connection_leaves_live_tunnels_alone(pki: Pki) -> None:
    async def go() -> None:
        async with rig(pki) as r, pool() as p:
            live = await open_stream(p, r, pki)
            await live.write(b"before")
            async with pool() as bad:
                with pytest.raises(HboneConnectionError):
                    await open_stream(bad, r, pki, ctx=pki.client_ctx(pki.expired_client))
            await live.write(b" and after")
            live.close_write()
            chunks = []
            while data := await live.read():
                chunks.append(data)
                live.acknowledge(len(data))
            assert b"".join(chunks) == b"before and after"
    run(go())




def test_a_client_that_never_starts_tls_is_dropped_after_the_handshake_timeout(pki: Pki) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with rig(pki, settings=HboneSettings(handshake_timeout=0.2)) as r:
            with socket.socket() as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, (r.hbone.ip, r.hbone.port))
                started = loop.time()
                await eventually(lambda: _closed(sock))
                assert loop.time() - started >= 0.15
            await still_serves(r, pki)
    run(go())
