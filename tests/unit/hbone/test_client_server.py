"""Our HBONE client pool against our server over loopback TCP with real mTLS: tunnels, half-close,
backpressure, resets, keepalive and pooling."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct

import h2.events
import pytest

from inmesh.hbone import (
    ConnectRequest,
    HboneConnectionError,
    HboneSettings,
    HboneStream,
    PoolKey,
    StreamResetError,
)
from inmesh.hbone.headers import forwarded, traceparent

from .helpers import (
    CLIENT_ID,
    LOCAL_IP,
    SERVER_ID,
    Pki,
    RawH2,
    Target,
    digest,
    echo,
    echo_roundtrip,
    eventually,
    open_stream,
    plain_socket,
    pool,
    read_all,
    read_stream,
    rig,
    run,
)

RESET = struct.pack("ii", 1, 0)


def test_bytes_both_ways_and_the_request_the_server_sees(pki: Pki) -> None:
    async def go() -> None:
        async with rig(pki) as r, pool() as p:
            stream = await p.open(r.key(), plain_socket, pki.client_ctx(), [SERVER_ID], r.app,
                                  [forwarded(Target("10.1.2.3", 4711)), traceparent()])
            assert stream.peer_identity == SERVER_ID
            await stream.write(b"hello hbone")
            stream.close_write()
            assert await read_stream(stream) == b"hello hbone"
            request = r.requests[0]
            assert (request.target, request.peer_identity) == (r.app, CLIENT_ID)
            assert request.peer_addr.ip == LOCAL_IP
            assert request.header("forwarded") == 'for="10.1.2.3:4711"'
            await eventually(lambda: len(r.done) == 1)
        done = r.done[0]
        assert (done.status, done.from_peer, done.to_peer, done.error) == (200, 11, 11, None)
    run(go())


def test_half_close_each_way_keeps_the_other_direction_open(pki: Pki) -> None:
    received: list[bytes] = []

    async def greeter(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"greeting")
        sock.shutdown(socket.SHUT_WR)  # the app is done talking, but still listens
        received.append(await read_all(sock))

    async def go() -> None:
        async with rig(pki, app=greeter) as r, pool() as p:
            stream = await open_stream(p, r, pki)
            assert await read_stream(stream) == b"greeting"  # END_STREAM arrived
            await stream.write(b"late reply")  # our direction is still open
            stream.close_write()
            await eventually(lambda: received == [b"late reply"])
            await eventually(lambda: len(r.done) == 1)
            assert r.done[0].error is None
    run(go())


def test_slow_reader_blocks_the_writer_instead_of_buffering(pki: Pki) -> None:
    """24 MiB towards an app that does not read: the writer stalls after about one stream
    window (plus small kernel buffers), then everything arrives intact once the app reads."""
    total, small = 24 << 20, 64 << 10
    release = asyncio.Event()
    got: list[str] = []

    async def slow_app(sock: socket.socket) -> None:
        await release.wait()
        got.append(digest(await read_all(sock)))

    async def small_buffers(request: ConnectRequest) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)
        return sock

    async def go() -> None:
        settings = HboneSettings()
        payload = os.urandom(total)
        async with rig(pki, app=slow_app, open_upstream=small_buffers) as r, pool() as p:
            stream = await open_stream(p, r, pki)
            written = 0

            async def writer() -> None:
                nonlocal written
                view = memoryview(payload)
                for offset in range(0, total, 256 << 10):
                    await stream.write(view[offset:offset + (256 << 10)])
                    written = offset + (256 << 10)
                stream.close_write()

            task = asyncio.create_task(writer())
            await _stalls(lambda: written)
            assert not task.done()
            # One stream window in flight, plus the upstream socket's and the app's buffers.
            assert written <= settings.stream_window + (4 << 20)
            release.set()
            await task
            assert await read_stream(stream) == b""
            await eventually(lambda: got == [digest(payload)], within=15)
    run(go())


async def _stalls(progress: object, quiet: int = 40) -> None:
    """Poll until ``progress()`` stops changing for ``quiet`` polls in a row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    last, same = -1, 0
    while same < quiet:
        value = progress()  # type: ignore[operator]
        same = same + 1 if value == last else 0
        last = value
        assert loop.time() < deadline, "the writer never stalled"
        await asyncio.sleep(0.005)


def test_client_reset_resets_the_app_connection(pki: Pki) -> None:
    errors: list[str] = []

    async def app(sock: socket.socket) -> None:
        try:
            await echo(sock)
        except ConnectionResetError:
            errors.append("reset")

    async def go() -> None:
        async with rig(pki, app=app) as r, pool() as p:
            stream = await open_stream(p, r, pki)
            await stream.write(b"some bytes")
            await eventually(lambda: len(r.app_conns) == 1)
            stream.reset()
            await eventually(lambda: errors == ["reset"])
            await eventually(lambda: len(r.done) == 1)
            assert "reset by peer" in (r.done[0].error or "")
            assert await echo_roundtrip(p, r, pki) == b"ping"  # the connection lives on
            assert r.accepted == 1
    run(go())


def test_app_reset_resets_the_client_stream(pki: Pki) -> None:
    async def rude_app(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_recv(sock, 100)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        sock.close()

    async def go() -> None:
        async with rig(pki, app=rude_app) as r, pool() as p:
            stream = await open_stream(p, r, pki)
            await stream.write(b"hello?")
            with pytest.raises(StreamResetError) as info:
                await read_stream(stream)
            assert info.value.by_peer
            assert info.value.error_code == 0xA  # CONNECT_ERROR: the TCP reset, mapped
            await eventually(lambda: len(r.done) == 1)
            assert "socket" in (r.done[0].error or "")
    run(go())


def test_second_stream_reuses_the_connection_without_a_handshake(pki: Pki) -> None:
    async def go() -> None:
        async with rig(pki) as r, pool() as p:
            assert await echo_roundtrip(p, r, pki, b"one") == b"one"
            assert await echo_roundtrip(p, r, pki, b"two") == b"two"
            assert (p.dials, r.accepted, p.connections(r.key())) == (1, 1, 1)
            # A different key (other source identity) never shares it.
            other = r.key(source=CLIENT_ID.__class__("cluster.local", "shop", "other"))
            stream = await open_stream(p, r, pki, key=other)
            stream.reset()
            assert (p.dials, r.accepted) == (2, 2)
    run(go())


def test_concurrent_openers_of_a_new_key_share_one_dial(pki: Pki) -> None:
    async def go() -> None:
        async with rig(pki) as r, pool() as p:
            streams = await asyncio.gather(*(open_stream(p, r, pki) for _ in range(8)))
            assert (p.dials, r.accepted) == (1, 1)
            for s in streams:
                s.reset()
    run(go())


def test_a_full_connection_makes_the_pool_dial_another(pki: Pki) -> None:
    async def go() -> None:
        settings = HboneSettings(client_max_streams=2)
        async with rig(pki) as r, pool(settings) as p:
            streams = await asyncio.gather(*(open_stream(p, r, pki) for _ in range(5)))
            assert (p.dials, r.accepted, p.connections(r.key())) == (3, 3, 3)
            for s in streams:
                await s.write(b"x")
                s.close_write()
                assert await read_stream(s) == b"x"
            assert await echo_roundtrip(p, r, pki) == b"ping"  # slots freed: no new dial
            assert p.dials == 3
    run(go())


def test_idle_connections_are_closed_and_leave_the_pool(pki: Pki) -> None:
    async def go() -> None:
        settings = HboneSettings(idle_timeout=0.1, ping_interval=0.05)
        async with rig(pki) as r, pool(settings) as p:
            assert await echo_roundtrip(p, r, pki) == b"ping"
            await eventually(lambda: p.connections() == 0)
            assert await echo_roundtrip(p, r, pki) == b"ping"
            assert (p.dials, r.accepted) == (2, 2)
    run(go())


def test_a_server_that_never_answers_pings_is_dropped(pki: Pki) -> None:
    """The peer completes TLS and then goes silent: no SETTINGS, no PING ACK."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        lsn = socket.create_server((LOCAL_IP, 0))
        lsn.setblocking(False)
        transports: list[asyncio.BaseTransport] = []

        async def silent() -> None:
            conn, _ = await loop.sock_accept(lsn)
            t, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn, ssl=pki.server_ctx())
            transports.append(t)

        task = asyncio.create_task(silent())
        settings = HboneSettings(ping_interval=0.05, ping_timeout=0.1)
        target = Target(LOCAL_IP, lsn.getsockname()[1])
        key = _key_for(target)
        async with pool(settings) as p:
            with pytest.raises(HboneConnectionError, match="unresponsive"):
                await p.open(key, plain_socket, pki.client_ctx(), [SERVER_ID], target)
            assert p.connections() == 0
        await task
        for t in transports:
            t.abort()
        lsn.close()
    run(go())


def _key_for(target: Target) -> PoolKey:
    return PoolKey(CLIENT_ID, SERVER_ID, LOCAL_IP, target)


def test_tls_is_1_3_with_alpn_h2_and_no_sni(pki: Pki) -> None:
    seen: list[object] = []

    def sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    async def go() -> None:
        ctx = pki.server_ctx()
        ctx.sni_callback = sni
        async with rig(pki, server_ctx=ctx) as r, pool() as p:
            stream = await open_stream(p, r, pki)
            stream.reset()
        assert seen == [None]
    run(go())


def test_data_sent_before_the_answer_is_held_then_delivered(pki: Pki) -> None:
    """A client may send right behind its CONNECT: the server buffers it (within the stream
    window, unacknowledged) until the upstream is connected."""

    async def go() -> None:
        async with rig(pki) as r:
            raw = await RawH2.connect(r.hbone, pki.client_ctx())
            sid = raw.conn.get_next_available_stream_id()
            raw.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", str(r.app))])
            raw.conn.send_data(sid, b"early bird", end_stream=True)
            await raw.flush()
            assert await raw.status(sid) == 200
            echoed = b""
            while True:
                event = await raw.next_event(h2.events.DataReceived, sid)
                echoed += event.data
                if event.stream_ended is not None:
                    break
            assert echoed == b"early bird"
            await raw.close()
    run(go())


def test_stopping_the_server_resets_its_tunnels(pki: Pki) -> None:
    async def go() -> None:
        async with pool() as p:
            async with rig(pki) as r:
                stream = await open_stream(p, r, pki)
                await stream.write(b"x")
            # The rig cancelled serve_hbone (a drain deadline): the tunnel is reset.
            with pytest.raises(StreamResetError):
                await read_stream(stream)
            assert p.connections() == 0
    run(go())


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_works_on_both_event_loops(pki: Pki, loop_name: str) -> None:
    async def go() -> bytes:
        async with rig(pki) as r, pool() as p:
            return await echo_roundtrip(p, r, pki, b"any loop")

    if loop_name == "asyncio":
        assert asyncio.run(asyncio.wait_for(go(), 20)) == b"any loop"
    else:
        assert run(go()) == b"any loop"


def test_many_tunnels_share_one_connection_without_mixing_bytes(pki: Pki) -> None:
    async def go() -> None:
        async with rig(pki) as r, pool() as p:
            payloads = [os.urandom(256 << 10) for _ in range(20)]

            async def one(payload: bytes) -> str:
                stream = await open_stream(p, r, pki)
                send = asyncio.create_task(stream.write(payload))
                echoed = await asyncio.gather(send, read_after_close(stream, send))
                return digest(echoed[1])

            got = await asyncio.gather(*(one(x) for x in payloads))
            assert got == [digest(x) for x in payloads]
            assert (p.dials, r.accepted) == (1, 1)
    run(go())


async def read_after_close(stream: object, send: asyncio.Task[None]) -> bytes:
    from inmesh.hbone import HboneStream

    assert isinstance(stream, HboneStream)
    await send
    stream.close_write()
    return await read_stream(stream)


def test_an_app_that_reads_one_tunnel_only_after_another_does_not_deadlock(pki: Pki) -> None:
    """ztunnel #1538: stream A's reader waits for data on stream B. A fills its whole stream
    window unread; B must still get through, because the connection window is 4x larger.
    (With connection_window == stream_window the same scenario hangs: checked by hand.)"""
    b_arrived = asyncio.Event()
    a_received: list[int] = []

    async def app(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        first = await loop.sock_recv(sock, 1)
        if first == b"B":
            b_arrived.set()
            return
        await b_arrived.wait()  # "A": read nothing more until B has spoken
        a_received.append(len(first) + len(await read_all(sock)))

    async def go() -> None:
        async with rig(pki, app=app) as r, pool() as p:
            a = await open_stream(p, r, pki)
            big = b"A" + bytes(8 << 20)  # twice the stream window
            write_a = asyncio.create_task(a.write(big))
            await _stalls(lambda: a._shell.core.send_window(a.stream_id))  # type: ignore[attr-defined]
            b = await open_stream(p, r, pki)
            await b.write(b"B")
            b.close_write()
            await write_a
            a.close_write()
            await eventually(lambda: a_received == [len(big)])
            assert (p.dials, r.accepted) == (1, 1)
    run(go())


async def _echo(stream: HboneStream, payload: bytes) -> bytes:
    await stream.write(payload)
    got = b""
    while len(got) < len(payload):
        data = await stream.read()
        assert data, "stream ended early"
        got += bytes(data)
        stream.acknowledge(len(data))
    return got


def test_a_draining_server_keeps_its_tunnels_and_sends_new_ones_elsewhere(pki: Pki) -> None:
    """GOAWAY from a draining server (ztunnel handing over): the tunnel it has keeps working
    both ways, the next tunnel goes over a new connection (which would reach the successor),
    and the drained connection closes after its last tunnel."""

    async def go() -> None:
        async with rig(pki) as r, pool() as p:
            old = await open_stream(p, r, pki)
            assert await _echo(old, b"one") == b"one"
            r.drain_existing()
            await asyncio.sleep(0.05)  # the GOAWAY reaches the client
            new = await open_stream(p, r, pki)
            assert (p.dials, r.accepted, p.retries) == (2, 2, 0)
            assert await _echo(old, b"two") == b"two"
            assert await _echo(new, b"three") == b"three"
            old.close_write()
            assert await read_stream(old) == b""
            await eventually(lambda: r.finished == 1)  # the drained connection closed
            assert p.connections() == 1
            assert await _echo(new, b"four") == b"four"
    run(go())


def test_a_connect_crossing_the_goaway_is_retried_on_a_new_connection(pki: Pki) -> None:
    """The client sends its CONNECT before the server's GOAWAY reaches it: the server refuses
    it unprocessed (REFUSED_STREAM) and the pool retries it on a fresh connection."""

    async def go() -> None:
        async with rig(pki) as r, pool() as p:
            old = await open_stream(p, r, pki)
            r.drain_existing()
            await asyncio.sleep(0)  # the server sends its GOAWAY; the client reads it later
            new = await open_stream(p, r, pki)  # so the CONNECT goes on the old connection
            assert (p.dials, r.accepted, p.retries) == (2, 2, 1)
            assert await _echo(new, b"retried") == b"retried"
            assert await _echo(old, b"kept") == b"kept"
    run(go())
