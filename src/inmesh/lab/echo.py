"""A tiny TCP server for the lab's pods: answers each line with the peer address it saw.

Run as ``python -m inmesh.lab.echo --port 8080 --ready-file PATH`` inside a pod netns. For every
line received it writes one JSON line ``{"peer": "ip:port", "echo": line}``, so a client learns
which source address reached the server (its own, or the proxy's). Stdlib only: it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
from collections.abc import Sequence

MAX_LINE = 4096
"""Longest line echoed; the lab sends short greetings, so anything longer is cut."""


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30.0
    """An idle client is dropped after this, so a stuck test cannot pin a thread forever."""

    def handle(self) -> None:
        peer = "{}:{}".format(*self.client_address[:2])
        while line := self.rfile.readline(MAX_LINE):
            reply = {"peer": peer, "echo": line.decode(errors="replace").rstrip("\n")}
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--ready-file", help="created once the server listens")
    args = parser.parse_args(argv)
    with EchoServer((args.bind, args.port), _Handler) as server:
        if args.ready_file:
            with open(args.ready_file + ".tmp", "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(args.ready_file + ".tmp", args.ready_file)
        server.serve_forever()


if __name__ == "__main__":
    main()
