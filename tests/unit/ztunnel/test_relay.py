"""The splice relay over real loopback TCP (no root): bytes, half-close, resets, backpressure,
cancellation, and the byte counts it reports."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from inmesh.ztunnel.relay import Relay, RelayEnd, relay, reset_close
from tests.unit.ztunnel.fakes import run, wait_for


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets over loopback."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as lsn:
        lsn.setblocking(False)
        c = socket.socket()
        c.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(lsn))
        await loop.sock_connect(c, lsn.getsockname())
        s, _ = await accept
        s.setblocking(False)
        return c, s


async def chain() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """client <-> a  [relay]  b <-> server"""
    client, a = await tcp_pair()
    b, server = await tcp_pair()
    return client, a, b, server


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while data := await loop.sock_recv(sock, 1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def test_bulk_bytes_both_ways_with_half_close_and_counts() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = await chain()
        up, down = os.urandom(3 << 20), os.urandom(5 << 20)
        task = asyncio.create_task(relay(a, b))

        async def client_side() -> bytes:
            await loop.sock_sendall(client, up)
            client.shutdown(socket.SHUT_WR)  # half-close: we can still read the answer
            return await read_all(client)

        async def server_side() -> bytes:
            got = await read_all(server)  # EOF arrives only after the client's half-close
            await loop.sock_sendall(server, down)
            server.shutdown(socket.SHUT_WR)
            return got

        got_down, got_up = await asyncio.gather(client_side(), server_side())
        result = await task
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        assert (result.a_to_b, result.b_to_a, result.end) == (len(up), len(down), RelayEnd.CLOSED)
        client.close()
        server.close()
    run(go())


def test_reset_by_one_side_resets_the_other() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = await chain()
        task = asyncio.create_task(relay(a, b))
        await loop.sock_sendall(client, b"hello")
        assert await loop.sock_recv(server, 5) == b"hello"
        reset_close(server)
        result = await task
        assert result.end is RelayEnd.RESET_BY_B
        assert result.a_to_b == 5
        with pytest.raises(ConnectionResetError):
            await read_all(client)
        client.close()
    run(go())


def test_cancellation_resets_both_sides_and_keeps_counts() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = await chain()
        r = Relay(a, b)
        task = asyncio.create_task(r.run())
        await loop.sock_sendall(server, b"x" * 1000)
        assert len(await loop.sock_recv(client, 4096)) > 0
        await wait_for(lambda: r.b_to_a == 1000)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (r.a_to_b, r.b_to_a) == (0, 1000)
        for sock in (client, server):
            with pytest.raises(ConnectionResetError):
                await read_all(sock)
            sock.close()
    run(go())


def test_backpressure_bounds_what_the_relay_holds() -> None:
    """The server never reads: the client must soon be unable to send, not fill our memory."""
    async def go() -> None:
        client, a, b, server = await chain()
        r = Relay(a, b, pipe_size=1 << 20)
        task = asyncio.create_task(r.run())
        chunk = b"z" * (1 << 20)
        sent = 0
        stalled_rounds = 0
        while stalled_rounds < 20 and sent < (256 << 20):
            progressed = False
            try:
                while True:
                    sent += client.send(chunk)
                    progressed = True
            except BlockingIOError:
                pass
            stalled_rounds = 0 if progressed else stalled_rounds + 1
            await asyncio.sleep(0.005)  # let the relay run; we measure where sending stops
        assert sent < (64 << 20), f"relay kept accepting: {sent} bytes"
        assert r.a_to_b <= sent
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        client.close()
        server.close()
    run(go())


def test_eof_both_ways_without_data_closes_cleanly() -> None:
    async def go() -> None:
        client, a, b, server = await chain()
        task = asyncio.create_task(relay(a, b))
        client.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)
        assert await read_all(server) == b""
        assert await read_all(client) == b""
        result = await task
        assert (result.a_to_b, result.b_to_a, result.end) == (0, 0, RelayEnd.CLOSED)
        client.close()
        server.close()
    run(go())
