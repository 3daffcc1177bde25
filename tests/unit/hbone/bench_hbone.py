"""Rough single-stream HBONE throughput over loopback TLS, client and server in two processes.

    .venv/bin/python -m tests.unit.hbone.bench_hbone [MiB]
    .venv/bin/python -m tests.unit.hbone.bench_hbone rr [COUNT]
    .venv/bin/python -m tests.unit.hbone.bench_hbone conn [COUNT]

The server process runs `serve_hbone` and a sink/source app; the client process opens one
tunnel through an `HbonePool` and pushes MiB up (the app counts them), then pulls MiB down.
Both print MB per CPU second of each process too. ``rr`` instead sends COUNT 1-byte messages
through the tunnel to an echo app, one at a time, and prints the median round trip and the CPU
both processes spent per round trip. ``conn`` opens COUNT tunnels one after the other over the
pooled connection (CONNECT, 1 byte each way, both ends close) and prints the median tunnel time
and the CPU per tunnel. ``PROFILE=path`` (``PROFILE_SERVER=path``) writes a cProfile of the client (server) process. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import asyncio
import cProfile
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import uvloop

from inmesh.hbone import PoolKey, serve_hbone
from inmesh.ztunnel.malloc import keep_buffers_on_heap

from .helpers import CLIENT_ID, LOCAL_IP, SERVER_ID, Pki, Target, plain_socket, pool

CHUNK = 256 << 10


async def _server(pki: Pki, ready: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    app = socket.create_server((LOCAL_IP, 0))
    hb = socket.create_server((LOCAL_IP, 0))
    echo = socket.create_server((LOCAL_IP, 0))
    cpu_lsn = socket.create_server((LOCAL_IP, 0))
    for lsn in (app, hb, echo, cpu_lsn):
        lsn.setblocking(False)
    ready.send((hb.getsockname()[1], app.getsockname()[1], echo.getsockname()[1],
                cpu_lsn.getsockname()[1]))

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

    async def echo_conn(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := await loop.sock_recv(c, 1 << 16):
            await loop.sock_sendall(c, data)
        c.close()

    async def cpu(c: socket.socket) -> None:
        await loop.sock_recv(c, 1)
        t = os.times()
        await loop.sock_sendall(c, f"{t.user} {t.system}".encode())
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
        tasks.create_task(accept(echo, echo_conn, tasks))
        tasks.create_task(accept(cpu_lsn, cpu, tasks))


def _serve(pki: Pki, ready: multiprocessing.connection.Connection) -> None:
    if os.environ.get("MALLOPT"):
        keep_buffers_on_heap()
    profile = os.environ.get("PROFILE_SERVER")
    if profile:
        profiler = cProfile.Profile()

        def dump(*_: object) -> None:
            profiler.disable()
            profiler.dump_stats(profile)
            os._exit(0)

        signal.signal(signal.SIGTERM, dump)
        profiler.enable()
    uvloop.run(_server(pki, ready))


def _server_cpu(port: int) -> float:
    """The server process's CPU seconds so far (user + system)."""
    user, system = _server_times(port)
    return user + system


def _server_times(port: int) -> tuple[float, float]:
    with socket.create_connection((LOCAL_IP, port)) as c:
        c.sendall(b"?")
        user, system = c.recv(100).split()
        return float(user), float(system)


async def _client(pki: Pki, ports: tuple[int, int, int, int], total: int) -> None:
    hb_port, app_port, _, cpu_port = ports
    async with pool() as p:
        key = PoolKey(CLIENT_ID, SERVER_ID, LOCAL_IP, Target(LOCAL_IP, hb_port))
        stream = await p.open(key, plain_socket, pki.client_ctx(), [SERVER_ID],
                              Target(LOCAL_IP, app_port))
        block = memoryview(os.urandom(CHUNK))
        cpu0, scpu0 = time.process_time(), _server_cpu(cpu_port)
        start = time.perf_counter()
        for offset in range(0, total, CHUNK):
            await stream.write(block[: min(CHUNK, total - offset)])
        stream.close_write()
        first = await stream.read()  # the app only answers after counting everything
        up = time.perf_counter() - start
        cpu1, scpu1 = time.process_time(), _server_cpu(cpu_port)
        got = len(first)
        stream.acknowledge(len(first))
        start = time.perf_counter()
        while data := await stream.read():
            got += len(data)
            stream.acknowledge(len(data))
        down = time.perf_counter() - start
        cpu2, scpu2 = time.process_time(), _server_cpu(cpu_port)
        assert got == total, (got, total)
        mib = total / (1 << 20)
        for name, wall, ccpu, scpu in (("up  ", up, cpu1 - cpu0, scpu1 - scpu0),
                                       ("down", down, cpu2 - cpu1, scpu2 - scpu1)):
            print(f"{name} {mib:.0f} MiB in {wall:.2f} s = {total / wall / 1e6:.0f} MB/s; "
                  f"MB per CPU s: client {total / ccpu / 1e6:.0f}, "
                  f"server {total / scpu / 1e6:.0f}")


@dataclass
class _Timed:
    """Per-unit wall times after a warm-up tenth, and the CPU (user, system) both processes
    spent on the timed units."""

    count: int
    times: list[int]
    client: tuple[float, float]
    server: tuple[float, float]

    def percentile(self, p: float) -> float:
        timed = sorted(self.times)
        return timed[int(len(timed) * p)] / 1e3

    def cpu(self) -> str:
        def us(seconds: float) -> str:
            return f"{seconds / self.count * 1e6:.1f}"

        return (f"(user + system): client {us(self.client[0])} + {us(self.client[1])} us, "
                f"server {us(self.server[0])} + {us(self.server[1])} us")


async def _timed(count: int, cpu_port: int, unit: Callable[[], Awaitable[None]]) -> _Timed:
    """Run ``unit`` count + count/10 times; time the last ``count`` and their CPU."""
    times = []
    cpu0, server0 = os.times(), _server_times(cpu_port)
    for i in range(count + count // 10):
        if i == count // 10:  # after a warm-up tenth
            cpu0, server0 = os.times(), _server_times(cpu_port)
        t0 = time.perf_counter_ns()
        await unit()
        if i >= count // 10:
            times.append(time.perf_counter_ns() - t0)
    cpu1, server1 = os.times(), _server_times(cpu_port)
    return _Timed(count, times, (cpu1.user - cpu0.user, cpu1.system - cpu0.system),
                  (server1[0] - server0[0], server1[1] - server0[1]))


async def _client_rr(pki: Pki, ports: tuple[int, int, int, int], count: int) -> None:
    hb_port, _, echo_port, cpu_port = ports
    async with pool() as p:
        key = PoolKey(CLIENT_ID, SERVER_ID, LOCAL_IP, Target(LOCAL_IP, hb_port))
        stream = await p.open(key, plain_socket, pki.client_ctx(), [SERVER_ID],
                              Target(LOCAL_IP, echo_port))

        async def round_trip() -> None:
            await stream.write(b"x")
            data = await stream.read()
            stream.acknowledge(len(data))

        t = await _timed(count, cpu_port, round_trip)
        stream.close_write()
        print(f"rr {count}: p50 {t.percentile(0.5):.1f} us, p99 {t.percentile(0.99):.1f} us;"
              f" CPU per round trip {t.cpu()}")


async def _client_conn(pki: Pki, ports: tuple[int, int, int, int], count: int) -> None:
    hb_port, _, echo_port, cpu_port = ports
    async with pool() as p:
        key = PoolKey(CLIENT_ID, SERVER_ID, LOCAL_IP, Target(LOCAL_IP, hb_port))
        ctx = pki.client_ctx()  # ztunnel keeps one per identity, too

        async def tunnel() -> None:
            stream = await p.open(key, plain_socket, ctx, [SERVER_ID],
                                  Target(LOCAL_IP, echo_port))
            await stream.write(b"x")
            data = await stream.read()
            stream.acknowledge(len(data))
            stream.close_write()
            assert await stream.read() == b""

        t = await _timed(count, cpu_port, tunnel)
        print(f"conn {count}: p50 {t.percentile(0.5):.1f} us; CPU per tunnel {t.cpu()}")


def main() -> None:
    mode = sys.argv[1] if sys.argv[1:2] in (["rr"], ["conn"]) else "bulk"
    args = sys.argv[2:] if mode != "bulk" else sys.argv[1:]
    pki = Pki.create()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(pki, child), daemon=True)
    server.start()
    try:
        ports = parent.recv()
        if os.environ.get("MALLOPT"):
            keep_buffers_on_heap()
        profile = os.environ.get("PROFILE")
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        if mode == "rr":
            uvloop.run(_client_rr(pki, ports, int(args[0] if args else "20000")))
        elif mode == "conn":
            uvloop.run(_client_conn(pki, ports, int(args[0] if args else "2000")))
        else:
            uvloop.run(_client(pki, ports, int(args[0] if args else "512") << 20))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
