"""Benchmark of the relay hot path (not a test: run it by hand, as root or not).

    .venv/bin/python tests/system/ztunnel/bench_relay.py [--quick]

Each variant runs in its own proxy process on loopback, between load generators in other
processes, so the numbers compare relay implementations, not the load generators:
  splice     inmesh.ztunnel.relay (os.splice through a pipe per direction)
  copy       the same readiness state machine with recv_into/send through a 64 KiB buffer
             (its best size here: 256 KiB and 1 MiB were slower, cache effects)
  protocol   asyncio Protocols with pause_reading/resume_reading backpressure (transports)
Workloads: bulk throughput (iperf3 through the proxy, 1 stream, 5 s), request/response
round-trip latency (64 bytes ping-pong on one connection), and connection rate (connect,
1-byte echo, close, sequentially).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from math import nan
from typing import Any

import uvloop

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from inmesh.ztunnel.relay import relay as splice_relay

# -- relay variants --------------------------------------------------------------------------


async def copy_relay(a: socket.socket, b: socket.socket, bufsize: int = 64 << 10) -> None:
    """recv_into/send with the same READING/WRITING state machine as the splice relay."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [2]

    def direction(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(bufsize)
        view = memoryview(buf)
        state = {"pending": 0, "off": 0, "reading": True}

        def on_read() -> None:
            try:
                n = src.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if not done.done():
                    done.set_exception(exc)
                return
            if n == 0:
                loop.remove_reader(src.fileno())
                dst.shutdown(socket.SHUT_WR)
                left[0] -= 1
                if left[0] == 0 and not done.done():
                    done.set_result(None)
                return
            state["pending"], state["off"] = n, 0
            flush()

        def flush() -> None:
            while state["pending"]:
                try:
                    n = dst.send(view[state["off"]:state["off"] + state["pending"]])
                except BlockingIOError:
                    if state["reading"]:
                        loop.remove_reader(src.fileno())
                        state["reading"] = False
                        loop.add_writer(dst.fileno(), flush)
                    return
                except OSError as exc:
                    if not done.done():
                        done.set_exception(exc)
                    return
                state["pending"] -= n
                state["off"] += n
            if not state["reading"]:
                loop.remove_writer(dst.fileno())
                loop.add_reader(src.fileno(), on_read)
                state["reading"] = True

        loop.add_reader(src.fileno(), on_read)

    direction(a, b)
    direction(b, a)
    try:
        await done
    finally:
        for s in (a, b):
            loop.remove_reader(s.fileno())
            loop.remove_writer(s.fileno())
            s.close()


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: _Pipe | None = None
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()
        self.early: list[bytes] = []  # data that arrived before the peer transport existed

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if self.peer.transport is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        assert self.peer is not None
        self.peer.transport.write_eof()
        return True

    def flush_early(self) -> None:
        assert self.peer is not None
        for data in self.early:
            self.peer.transport.write(data)
        self.early.clear()

    def pause_writing(self) -> None:
        assert self.peer is not None
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.peer is not None
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def protocol_relay(a: socket.socket, b: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    pa, pb = _Pipe(), _Pipe()
    pa.peer, pb.peer = pb, pa
    await loop.connect_accepted_socket(lambda: pa, a)
    await loop.connect_accepted_socket(lambda: pb, b)
    pa.flush_early()
    await asyncio.gather(pa.closed, pb.closed)


VARIANTS: dict[str, Any] = {"splice": splice_relay, "copy": copy_relay,
                            "protocol": protocol_relay}

# -- processes -------------------------------------------------------------------------------


def proxy_main(variant: str, listen_port: int, upstream_port: int, ready: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsn = socket.create_server(("127.0.0.1", listen_port), backlog=1024)
        lsn.setblocking(False)
        ready.set()
        fn = VARIANTS[variant]

        async def handle(c: socket.socket) -> None:
            u = socket.socket()
            u.setblocking(False)
            c.setblocking(False)
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await loop.sock_connect(u, ("127.0.0.1", upstream_port))
                await fn(c, u)
            except OSError:
                c.close()
                u.close()

        tasks = set()
        while True:
            c, _ = await loop.sock_accept(lsn)
            t = loop.create_task(handle(c))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    uvloop.run(main())


def echo_main(port: int, ready: Any) -> None:
    async def main() -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := await r.read(65536):
                w.write(data)
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        ready.set()
        await server.serve_forever()

    uvloop.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(target: Any, *args: Any) -> mp.Process:
    ready = mp.Event()
    p = mp.Process(target=target, args=(*args, ready), daemon=True)
    p.start()
    ready.wait(10)
    return p


# -- workloads -------------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """Nanoseconds the process has spent on a CPU (/proc/PID/schedstat), all threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def bulk(proxy: mp.Process, proxy_port: int, seconds: int, reverse: bool) -> tuple[float, float]:
    """(Gbit/s measured by iperf3 through the proxy, proxy CPU ms per GiB relayed)."""
    assert proxy.pid is not None
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(proxy_port), "-t", str(seconds), "-J"]
    cpu = cpu_ns(proxy.pid)
    out = subprocess.run(argv + (["-R"] if reverse else []), capture_output=True, text=True,
                         check=True, timeout=seconds + 30).stdout
    cpu = cpu_ns(proxy.pid) - cpu
    summary = json.loads(out)["end"]["sum_received"]
    gib = float(summary["bytes"]) / (1 << 30)
    return float(summary["bits_per_second"]) / 1e9, cpu / 1e6 / gib


def pingpong(port: int, rounds: int) -> float:
    """Median round-trip time in microseconds, 64-byte messages on one connection."""
    msg = b"x" * 64
    times = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            t = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(s.recv(4096))
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def conn_rate(port: int, count: int) -> float:
    """Connections per second: connect, 1-byte echo, close."""
    t = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
    return count / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pipe-size", type=int, default=1 << 20, help="splice pipe bytes")
    args = ap.parse_args()
    variants = args.variants.split(",")
    VARIANTS["splice"] = functools.partial(splice_relay, pipe_size=args.pipe_size)
    seconds, rounds, conns = (2, 3000, 500) if args.quick else (5, 20000, 3000)
    have_iperf = shutil.which("iperf3") is not None
    iperf_port, echo_port = free_port(), free_port()
    servers = [start(echo_main, echo_port)]
    iperf = None
    if have_iperf:
        iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    print(f"median of {args.repeat} runs; cpu = proxy process CPU time (robust to load)")
    print(f"{'variant':10} {'up Gb/s':>8} {'cpu ms/GiB':>10} {'down Gb/s':>9} {'cpu ms/GiB':>10}"
          f" {'rtt us':>7} {'cpu us/rt':>9} {'conn/s':>7} {'cpu us/conn':>11}")
    try:
        results: dict[str, list[tuple[float, ...]]] = {v: [] for v in variants}
        for _ in range(args.repeat):  # interleaved, so background load hits every variant
            for variant in variants:
                p_bulk = start(proxy_main, variant, bp := free_port(), iperf_port)
                p_echo = start(proxy_main, variant, ep := free_port(), echo_port)
                assert p_echo.pid is not None
                try:
                    up = bulk(p_bulk, bp, seconds, False) if have_iperf else (nan, nan)
                    down = bulk(p_bulk, bp, seconds, True) if have_iperf else (nan, nan)
                    cpu = cpu_ns(p_echo.pid)
                    rtt = pingpong(ep, rounds)
                    cpu_rt = (cpu_ns(p_echo.pid) - cpu) / 1e3 / rounds
                    cpu = cpu_ns(p_echo.pid)
                    rate = conn_rate(ep, conns)
                    cpu_conn = (cpu_ns(p_echo.pid) - cpu) / 1e3 / conns
                    results[variant].append((*up, *down, rtt, cpu_rt, rate, cpu_conn))
                finally:
                    p_bulk.kill()
                    p_echo.kill()
        for variant, runs in results.items():
            m = [statistics.median(col) for col in zip(*runs, strict=True)]
            print(f"{variant:10} {m[0]:8.2f} {m[1]:10.0f} {m[2]:9.2f} {m[3]:10.0f}"
                  f" {m[4]:7.1f} {m[5]:9.1f} {m[6]:7.0f} {m[7]:11.1f}", flush=True)
        direct = pingpong(echo_port, rounds), conn_rate(echo_port, conns)
        print(f"{'(direct)':10} {'':8} {'':10} {'':9} {'':10} {direct[0]:7.1f} {'':9}"
              f" {direct[1]:7.0f}")
    finally:
        for s in servers:
            s.kill()
        if iperf is not None:
            iperf.kill()
            iperf.wait()


if __name__ == "__main__":
    main()
