"""`relay_socket_stream` on the client side of a tunnel, as the outbound proxy uses it:
app socket <-> relay <-> HBONE stream <-> server <-> upstream app. Half-close, resets and
cancellation map between TCP and HTTP/2 both ways."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from inmesh.hbone import relay_socket_stream

from .helpers import (
    Pki,
    digest,
    echo,
    eventually,
    open_stream,
    pool,
    read_all,
    rig,
    run,
    tcp_pair,
)

RESET = struct.pack("ii", 1, 0)


def test_bulk_bytes_with_half_close_and_counts(pki: Pki) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        payload = os.urandom(3 << 20)
        async with rig(pki, app=echo) as r, pool() as p:
            app, proxy_side = await tcp_pair()
            relay = asyncio.create_task(relay_socket_stream(proxy_side, await open_stream(p, r, pki)))

            async def app_side() -> bytes:
                await loop.sock_sendall(app, payload)
                app.shutdown(socket.SHUT_WR)
                return await read_all(app)

            echoed = await app_side()
            counts = await relay
            assert digest(echoed) == digest(payload)
            assert counts == (len(payload), len(payload))
            assert (counts.to_stream, counts.from_stream) == (len(payload), len(payload))
            assert proxy_side.fileno() == -1  # the relay closed its socket
            app.close()
    run(go())


def test_app_reset_becomes_connect_error_at_the_server(pki: Pki) -> None:
    upstream_saw: list[str] = []

    async def upstream(sock: socket.socket) -> None:
        try:
            await read_all(sock)
            upstream_saw.append("eof")
        except ConnectionResetError:
            upstream_saw.append("reset")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with rig(pki, app=upstream) as r, pool() as p:
            app, proxy_side = await tcp_pair()
            stream = await open_stream(p, r, pki)
            relay = asyncio.create_task(relay_socket_stream(proxy_side, stream))
            await loop.sock_sendall(app, b"partial")
            await eventually(lambda: len(r.app_conns) == 1)
            app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            app.close()
            await relay
            assert "CONNECT_ERROR" in str(stream.error)
            await eventually(lambda: upstream_saw == ["reset"])
            await eventually(lambda: len(r.done) == 1)
            assert "reset by peer (CONNECT_ERROR)" in (r.done[0].error or "")
    run(go())


def test_stream_reset_becomes_a_tcp_reset_for_the_app(pki: Pki) -> None:
    async def rude(sock: socket.socket) -> None:
        await asyncio.get_running_loop().sock_recv(sock, 10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        sock.close()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with rig(pki, app=rude) as r, pool() as p:
            app, proxy_side = await tcp_pair()
            relay = asyncio.create_task(relay_socket_stream(proxy_side, await open_stream(p, r, pki)))
            await loop.sock_sendall(app, b"hi")
            with pytest.raises(ConnectionResetError):
                await read_all(app)
            await relay
            app.close()
    run(go())


def test_cancelled_relay_resets_both_sides(pki: Pki) -> None:
    upstream_saw: list[bytes | str] = []

    async def upstream(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(sock, 100):
                upstream_saw.append(data)
            upstream_saw.append("eof")
        except ConnectionResetError:
            upstream_saw.append("reset")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with rig(pki, app=upstream) as r, pool() as p:
            app, proxy_side = await tcp_pair()
            stream = await open_stream(p, r, pki)
            relay = asyncio.create_task(relay_socket_stream(proxy_side, stream))
            await loop.sock_sendall(app, b"x")
            await eventually(lambda: upstream_saw == [b"x"])  # the relay is running
            relay.cancel()
            with pytest.raises(asyncio.CancelledError):
                await relay
            with pytest.raises(ConnectionResetError):
                await read_all(app)
            await eventually(lambda: upstream_saw == [b"x", "reset"])
            app.close()
    run(go())
