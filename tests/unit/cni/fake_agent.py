"""A stand-in for the node agent's plugin-event endpoint: HTTP over a unix socket, in a thread.

It records every request and answers with a configurable status and body; with ``hang=True`` it
holds each request until the test ends (to drive the plugin's timeout).
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

ENROLLED = json.dumps({"enrolled": True, "reason": "ambient pod"}).encode()
NOT_MESH = json.dumps({"enrolled": False, "reason": "not an ambient pod"}).encode()

#: How often the server loop looks for shutdown (bounds the time a test waits to stop it).
SHUTDOWN_POLL_SECONDS = 0.02
#: How long a hung handler waits for the test to release it (a bound, not a sleep).
HANG_RELEASE_SECONDS = 10.0


class FakeAgent:
    def __init__(
        self, socket_path: str, *, status: int = 200, reply: bytes = ENROLLED, hang: bool = False
    ) -> None:
        self.socket_path = socket_path
        self.status = status
        self.reply = reply
        self.hang = hang
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._release = threading.Event()
        self._server: socketserver.UnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def __enter__(self) -> FakeAgent:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                agent.requests.append((self.path, json.loads(self.rfile.read(length))))
                if agent.hang:
                    agent._release.wait(HANG_RELEASE_SECONDS)
                try:
                    self.send_response(agent.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(agent.reply)))
                    self.end_headers()
                    self.wfile.write(agent.reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the plugin gave up waiting (timeout tests)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self._server = socketserver.UnixStreamServer(self.socket_path, Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), name="fake-agent"
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        assert self._server is not None
        assert self._thread is not None
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        os.unlink(self.socket_path)
