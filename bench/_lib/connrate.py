"""New TCP connections per second: a tiny server and a client that opens connections in a loop.

Stdlib only, run inside a pod's netns as a script:

    python connrate.py server --port 7100
    python connrate.py client --host 10.244.1.3 --port 7100 --seconds 2 --parallel 4

Each client connection: connect, write 1 byte, read the 1-byte echo, close; then the next one
starts at once. ``--parallel`` connections are in flight at any time (one thread, non-blocking
sockets and a selector, so the client costs little CPU per connection). The server echoes and
closes when the client has closed (so TIME_WAIT stays on the client, as with a real client).
The client prints one JSON object: completed connections, connections per second over the
timed window (after ``--warmup`` seconds that are not counted), the time of each connection
from ``connect`` to the echo (percentiles, us) and failures by kind.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import selectors
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

IO_TIMEOUT_S = 5.0
"""A connection in the lab takes well under a millisecond; nothing happening for this long
means the path is broken, and the client gives up instead of hanging."""
BACKLOG = 1024
"""Server listen backlog: the client has at most --parallel connections in flight."""
RECV_SIZE = 64


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of an already sorted, non-empty sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


# -- server ----------------------------------------------------------------------------------


def serve(bind: str, port: int) -> None:
    """Echo what each connection sends; close it at its EOF (or error). Runs until killed."""
    sel = selectors.DefaultSelector()
    lsock = socket.create_server((bind, port), backlog=BACKLOG)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    print(f"listening on {bind}:{port}", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                _accept_all(lsock, sel)
                continue
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(RECV_SIZE)
                if data:
                    conn.send(data)  # a few bytes into an empty send buffer: never partial
                    continue
            except OSError:
                pass
            sel.unregister(conn)
            conn.close()


def _accept_all(lsock: socket.socket, sel: selectors.BaseSelector) -> None:
    while True:
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. ECONNABORTED: the client gave up; the others still count
            continue
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(conn, selectors.EVENT_READ, 1)


# -- client ----------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("sent", "sock", "t0")

    def __init__(self, sock: socket.socket, t0: int) -> None:
        self.sock, self.t0, self.sent = sock, t0, False


class Client:
    """See the module docstring; `run` returns the JSON-able result."""

    def __init__(self, host: str, port: int, parallel: int) -> None:
        self.addr = (host, port)
        self.parallel = parallel
        self.sel = selectors.DefaultSelector()
        self.errors: Counter[str] = Counter()
        self.durations: list[int] = []
        self.timing = False
        self.accepting_new = True
        self.started = 0
        self.completed = 0
        """Connections that got their echo, timed or not."""
        self.limit = 0
        """Start at most this many connections (0: no limit, run by time)."""

    def _start(self) -> None:
        if self.limit and self.started >= self.limit:
            self.accepting_new = False
            return
        self.started += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter_ns()
        rc = sock.connect_ex(self.addr)
        if rc not in (0, errno.EINPROGRESS):
            self._fail(sock, f"connect: {errno.errorcode.get(rc, rc)}", registered=False)
            return
        self.sel.register(sock, selectors.EVENT_WRITE, _Conn(sock, t0))

    def _fail(self, sock: socket.socket, why: str, registered: bool = True) -> None:
        self.errors[why] += 1
        if registered:
            self.sel.unregister(sock)
        sock.close()

    def _step(self, conn: _Conn) -> bool:
        """Advance one connection; True when it is finished (done or failed)."""
        sock = conn.sock
        if not conn.sent:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(sock, f"connect: {errno.errorcode.get(err, err)}")
                return True
            try:
                sock.send(b"x")
            except OSError as exc:
                self._fail(sock, f"send: {errno.errorcode.get(exc.errno or 0, exc)}")
                return True
            conn.sent = True
            self.sel.modify(sock, selectors.EVENT_READ, conn)
            return False
        try:
            data = sock.recv(1)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._fail(sock, f"recv: {errno.errorcode.get(exc.errno or 0, exc)}")
            return True
        if data != b"x":
            self._fail(sock, "closed before the echo")
            return True
        elapsed = time.perf_counter_ns() - conn.t0
        self.sel.unregister(sock)
        sock.close()
        self.completed += 1
        if self.timing:
            self.durations.append(elapsed)
        return True

    def run_count(self, count: int) -> dict[str, Any]:
        """Exactly ``count`` connections (for checking a proxy's counters), all timed."""
        self.limit = count
        return self.run(IO_TIMEOUT_S * 1e6, 0.0)

    def run(self, seconds: float, warmup: float) -> dict[str, Any]:
        start = time.monotonic()
        timed_from, deadline = start + warmup, start + warmup + seconds
        for _ in range(self.parallel):
            self._start()
        t_timed = time.monotonic()
        while self.sel.get_map():
            events = self.sel.select(IO_TIMEOUT_S)
            if not events:
                for key in list(self.sel.get_map().values()):
                    self._fail(key.fileobj, "stalled")  # type: ignore[arg-type]
                break
            now = time.monotonic()
            if not self.timing and now >= timed_from:
                self.timing, t_timed = True, now
            if now >= deadline:
                self.accepting_new = False
            for key, _ in events:
                if self._step(key.data) and self.accepting_new:
                    self._start()
        elapsed = max(time.monotonic() - t_timed, 1e-9) if self.timing else 0.0
        return self._result(elapsed)

    def _result(self, elapsed: float) -> dict[str, Any]:
        d = sorted(self.durations)
        out: dict[str, Any] = {
            "connections": len(d),
            "completed_total": self.completed,
            "timed_s": elapsed,
            "conn_per_s": len(d) / elapsed if elapsed else 0.0,
            "parallel": self.parallel,
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
        }
        if d:
            out |= {"p50_us": percentile(d, 0.5) / 1e3, "p99_us": percentile(d, 0.99) / 1e3}
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
    cli.add_argument("--seconds", type=float, default=2.0)
    cli.add_argument("--warmup", type=float, default=0.25)
    cli.add_argument("--parallel", type=int, default=4)
    cli.add_argument(
        "--count", type=int, default=0, help="exactly this many connections (0: run --seconds)"
    )
    args = parser.parse_args(argv)
    if args.role == "server":
        serve(args.bind, args.port)
        return 0
    client = Client(args.host, args.port, max(1, args.parallel))
    result = client.run_count(args.count) if args.count else client.run(args.seconds, args.warmup)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
