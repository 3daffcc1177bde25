"""1-byte request/response over one TCP connection: an echo server and a timing client.

Stdlib only, run inside a pod's netns as a script:

    python rr.py server --port 7000
    python rr.py client --host 10.244.1.3 --port 7000 --count 20000 --warmup 1000

The client opens one connection (TCP_NODELAY on both ends), sends one byte and waits for it to
come back, ``warmup + count`` times, timing each round trip with a monotonic nanosecond clock;
it prints one JSON object (percentiles in microseconds). The same client runs on every path,
so its own cost (Python, syscalls, scheduler wake-ups) is the same and cancels out in the
differences between paths.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Sequence

RECV_SIZE = 65536
"""The server echoes whatever one recv returns; the client only ever has one byte in flight."""
CONNECT_TIMEOUT_S = 5.0
"""A connection in the lab completes in milliseconds; seconds mean the path is broken."""
IO_TIMEOUT_S = 10.0
"""A round trip takes microseconds; a stalled relay fails the run instead of hanging it."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p999, mean, min and max in microseconds of round-trip times in ns."""
    s = sorted(samples_ns)
    us = 1e-3
    return {
        "count": len(s),
        "p50_us": percentile(s, 0.50) * us,
        "p90_us": percentile(s, 0.90) * us,
        "p99_us": percentile(s, 0.99) * us,
        "p999_us": percentile(s, 0.999) * us,
        "mean_us": sum(s) / len(s) * us,
        "min_us": s[0] * us,
        "max_us": s[-1] * us,
    }


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- server ----------------------------------------------------------------------------------


def _echo(conn: socket.socket) -> None:
    with conn:
        _nodelay(conn)
        conn.settimeout(None)
        while data := conn.recv(RECV_SIZE):
            conn.sendall(data)


def serve(bind: str, port: int) -> None:
    """Echo every connection (one thread each) until killed."""
    with socket.create_server((bind, port), reuse_port=False, backlog=64) as lsock:
        print(f"listening on {bind}:{port}", flush=True)
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()


# -- client ----------------------------------------------------------------------------------


def round_trips(host: str, port: int, count: int, warmup: int) -> list[int]:
    """Round-trip times (ns) of ``count`` 1-byte exchanges after ``warmup`` untimed ones."""
    clock = time.perf_counter_ns
    out = [0] * count
    buf = bytearray(1)
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
        _nodelay(sock)
        sock.settimeout(IO_TIMEOUT_S)
        send, recv_into = sock.send, sock.recv_into
        for i in range(-warmup, count):
            t0 = clock()
            send(b"x")
            if recv_into(buf, 1) != 1:
                raise ConnectionError("echo server closed the connection mid-run")
            if i >= 0:
                out[i] = clock() - t0
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--bind", default="0.0.0.0")
    srv.add_argument("--port", type=int, required=True)
    cli = sub.add_parser("client")
    cli.add_argument("--host", required=True)
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--count", type=int, default=20000)
    cli.add_argument("--warmup", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.role == "server":
        serve(args.bind, args.port)
        return 0
    started = time.monotonic()
    samples = round_trips(args.host, args.port, args.count, args.warmup)
    result = summarize_ns(samples)
    result["warmup"] = args.warmup
    result["elapsed_s"] = time.monotonic() - started
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
