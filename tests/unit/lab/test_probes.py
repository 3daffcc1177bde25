"""The small HTTP client for agent and ztunnel endpoints."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from inmesh.errors import RemoteProtocolError
from inmesh.lab.probes import EndpointUnreachable, get_unix, split_addr


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ready": true}' if self.path == "/status" else b"nope"
        self.send_response(200 if self.path == "/status" else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "s.sock")
    server = socketserver.UnixStreamServer(path, _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_get_over_a_unix_socket(unix_server: str) -> None:
    reply = get_unix(unix_server, "/status", 2.0)
    assert reply.ok
    assert reply.json() == {"ready": True}
    bad = get_unix(unix_server, "/readyz", 2.0)
    assert bad.status == 503
    assert not bad.ok
    with pytest.raises(RemoteProtocolError):
        bad.json()


def test_nobody_listening_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(EndpointUnreachable, match="GET /readyz"):
        get_unix(str(tmp_path / "missing.sock"), "/readyz", 1.0)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:15000", ("127.0.0.1", 15000)), ("0.0.0.0:15021", ("127.0.0.1", 15021)),
     ("[::]:15020", ("127.0.0.1", 15020)), ("[::1]:15000", ("::1", 15000))],
)  # fmt: skip
def test_split_addr_turns_wildcards_into_loopback(addr: str, expected: tuple[str, int]) -> None:
    assert split_addr(addr) == expected
