"""The agent's HTTP/1.1 endpoint on a unix socket (the CNI plugin and operators talk to it).

One request per connection (``Connection: close``), bodies bounded, JSON in and out. A malformed
request gets a 400 and closes only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
"""Request line plus headers; the plugin sends a few hundred bytes."""
MAX_BODY_BYTES = 1024 * 1024
"""A CNI request body is well under 4 KiB; 1 MiB matches what the plugin reads of a reply."""
READ_TIMEOUT = 10.0
"""Seconds a client may take to send its request before the connection is dropped."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not JSON: {exc}") from exc


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: object) -> Response:
        return cls(status, json.dumps(obj, sort_keys=True).encode() + b"\n")

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


class BadRequest(Exception):
    """The client's request is malformed (answered with 400)."""


Handler = Callable[[Request], Awaitable[Response]]


def parse_head(head: bytes) -> tuple[str, str, int]:
    """Parse the request line and headers; return (method, path, content length)."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ")
    except ValueError as exc:
        raise BadRequest("malformed request line") from exc
    if not version.startswith("HTTP/1."):
        raise BadRequest(f"unsupported protocol {version!r}")
    length = 0
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"malformed header line {line[:40]!r}")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError as exc:
                raise BadRequest("bad Content-Length") from exc
            if not 0 <= length <= MAX_BODY_BYTES:
                raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
    return method, path, length


def render(resp: Response) -> bytes:
    reason = HTTPStatus(resp.status).phrase
    headers = {
        "Content-Type": resp.content_type,
        "Content-Length": str(len(resp.body)),
        "Connection": "close",
        **resp.headers,
    }
    head = f"HTTP/1.1 {resp.status} {reason}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return head.encode("latin-1") + b"\r\n" + resp.body


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("request head too large") from exc
    except asyncio.IncompleteReadError as exc:
        raise BadRequest("connection closed before the request was complete") from exc
    method, path, length = parse_head(head[:-4])
    try:
        body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise BadRequest("body shorter than Content-Length") from exc
    return Request(method, path, body)


async def serve_unix(path: str, handler: Handler, mode: int = 0o660) -> asyncio.Server:
    """Serve ``handler`` on a unix socket at ``path`` (a stale socket file is replaced)."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                req = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
            except (BadRequest, TimeoutError) as exc:
                resp = Response.text(400, f"bad request: {exc}\n")
            else:
                try:
                    resp = await handler(req)
                except BadRequest as exc:
                    resp = Response.text(400, f"bad request: {exc}\n")
                except Exception as exc:
                    log.exception("handler failed for %s %s", req.method, req.path)
                    resp = Response.text(500, f"internal error: {exc}\n")
            writer.write(render(resp))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("client connection failed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    server = await asyncio.start_unix_server(on_client, path, limit=MAX_HEADER_BYTES)
    os.chmod(path, mode)
    return server
