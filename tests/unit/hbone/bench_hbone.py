"""Rough single-stream HBONE throughput over loopback TLS, client and server in two processes.

    .venv/bin/python -m tests.unit.hbone.bench_hbone [MiB]

The server process runs `serve_hbone` and a sink/source app; the client process opens one
tunnel through an `HbonePool` and pushes MiB up (the app counts them), then pulls MiB down.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import uvloop

from inmesh.hbone import PoolKey, serve_hbone

from .helpers import CLIENT_ID, LOCAL_IP, SERVER_ID, Pki, Target, plain_socket, pool

CHUNK = 256 << 10


async def _server(pki: Pki, ready: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    app = socket.create_server((LOCAL_IP, 0))
    hb = socket.create_server((LOCAL_IP, 0))
    app.setblocking(False)
    hb.setblocking(False)
    ready.send((hb.getsockname()[1], app.getsockname()[1]))

    async def app_conn(c: socket.socket) -> None:
        n = 0
        while data := await loop.sock_recv(c, 1 << 20):  # up: count until EOF
            n += len(data)
        down = n
        block = bytes(CHUNK)
        sent = 0
        while sent < down:  # down: send as much back
            await loop.sock_sendall(c, block[: min(CHUNK, down - sent)])
            sent += min(CHUNK, down - sent)
        c.close()

    async def hbone_conn(c: socket.socket) -> None:
        async def upstream(_: object) -> socket.socket:
            return socket.socket()
        await serve_hbone(c, pki.server_ctx(), [LOCAL_IP], "cluster.local", upstream)

    async def accept(lsn: socket.socket, handler: Callable[[socket.socket], Awaitable[None]],
                     tasks: asyncio.TaskGroup) -> None:
        while True:
            c, _ = await loop.sock_accept(lsn)
            tasks.create_task(handler(c))

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(accept(app, app_conn, tasks))
        tasks.create_task(accept(hb, hbone_conn, tasks))


def _serve(pki: Pki, ready: multiprocessing.connection.Connection) -> None:
    uvloop.run(_server(pki, ready))


async def _client(pki: Pki, hb_port: int, app_port: int, total: int) -> None:
    async with pool() as p:
        key = PoolKey(CLIENT_ID, SERVER_ID, LOCAL_IP, Target(LOCAL_IP, hb_port))
        stream = await p.open(key, plain_socket, pki.client_ctx(), [SERVER_ID],
                              Target(LOCAL_IP, app_port))
        block = memoryview(os.urandom(CHUNK))
        start = time.perf_counter()
        for offset in range(0, total, CHUNK):
            await stream.write(block[: min(CHUNK, total - offset)])
        stream.close_write()
        first = await stream.read()  # the app only answers after counting everything
        up = time.perf_counter() - start
        got = len(first)
        stream.acknowledge(len(first))
        start = time.perf_counter()
        while data := await stream.read():
            got += len(data)
            stream.acknowledge(len(data))
        down = time.perf_counter() - start
        assert got == total, (got, total)
        mib = total / (1 << 20)
        print(f"up   {mib:.0f} MiB in {up:.2f} s = {total / up / 1e6:.0f} MB/s")
        print(f"down {mib:.0f} MiB in {down:.2f} s = {total / down / 1e6:.0f} MB/s")


def main() -> None:
    total = int(sys.argv[1] if len(sys.argv) > 1 else "512") << 20
    pki = Pki.create()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(pki, child), daemon=True)
    server.start()
    try:
        hb_port, app_port = parent.recv()
        uvloop.run(_client(pki, hb_port, app_port, total))
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
