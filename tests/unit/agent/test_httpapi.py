"""The agent's small HTTP/1.1 layer: head parsing, bounds, rendering, and a real round trip."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.agent.httpapi import BadRequest, Request, Response, parse_head, render, serve_unix


def test_parse_head_reads_method_path_and_length() -> None:
    head = b"POST /cmdadd HTTP/1.1\r\nHost: unix\r\nContent-Length: 12"
    assert parse_head(head) == ("POST", "/cmdadd", 12)


@pytest.mark.parametrize(
    "head",
    [b"garbage", b"GET / SPDY/3", b"GET / HTTP/1.1\r\nno-colon", b"GET / HTTP/1.1\r\nContent-Length: x",
     b"GET / HTTP/1.1\r\nContent-Length: 99999999"],
)
def test_malformed_heads_are_bad_requests(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(head)


@given(st.binary(max_size=300))
def test_parse_head_raises_only_bad_request(data: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_head(data)


def test_render_sets_length_and_closes() -> None:
    out = render(Response.json(200, {"a": 1}))
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 9\r\n" in out
    assert b"Connection: close" in out
    assert out.endswith(b'{"a": 1}\n')


class _UnixConn(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def test_round_trip_over_a_unix_socket_and_garbage_gets_400(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")

    async def handler(req: Request) -> Response:
        return Response.json(200, {"method": req.method, "path": req.path, "body": req.json()})

    def client_calls() -> tuple[int, bytes, bytes]:
        conn = _UnixConn(path)
        conn.request("POST", "/x", body=b'{"k": 2}', headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
        conn.close()
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(path)
            raw.sendall(b"NOT HTTP\r\n\r\n")
            garbage_reply = raw.recv(4096)
        return status, body, garbage_reply

    async def main() -> tuple[int, bytes, bytes]:
        server = await serve_unix(path, handler)
        try:
            return await asyncio.to_thread(client_calls)
        finally:
            server.close()
            await server.wait_closed()

    status, body, garbage = asyncio.run(main())
    assert status == 200
    assert body == b'{"body": {"k": 2}, "method": "POST", "path": "/x"}\n'
    assert garbage.startswith(b"HTTP/1.1 400")
