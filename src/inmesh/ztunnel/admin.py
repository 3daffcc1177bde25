"""ztunnel's HTTP endpoints: admin (/config_dump), metrics (/metrics), readiness (/healthz/ready).

`respond` is pure (request line in, `HttpResponse` out). `AdminServers` is the thin asyncio
shell: three tiny HTTP/1.1 servers in the process's own netns, one request per connection.
Their ports are bound with SO_REUSEADDR and retried in the background while another ztunnel
(the one being replaced) still holds them; that one closes them when it starts draining.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from inmesh.ztunnel.addressing import HostPort
from inmesh.ztunnel.settings import ZtunnelSettings

log = logging.getLogger(__name__)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}
TEXT = "text/plain; charset=utf-8"


class Surface(enum.Enum):
    """Which of the three servers a request arrived on."""

    ADMIN = "admin"
    METRICS = "metrics"
    READINESS = "readiness"


class AdminView(Protocol):
    """What the endpoints read from the running process."""

    def readiness_blockers(self) -> list[str]: ...

    def config_dump(self) -> dict[str, Any]: ...

    def metrics(self) -> tuple[bytes, str]: ...


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = TEXT

    def encode(self) -> bytes:
        head = (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
                f"Content-Type: {self.content_type}\r\n"
                f"Content-Length: {len(self.body)}\r\n"
                "Connection: close\r\n\r\n")
        return head.encode("ascii") + self.body


_PATHS: dict[Surface, frozenset[str]] = {
    Surface.ADMIN: frozenset({"/", "/config_dump"}),
    Surface.METRICS: frozenset({"/metrics", "/stats/prometheus"}),
    Surface.READINESS: frozenset({"/healthz/ready"}),
}


def respond(surface: Surface, request_line: bytes, view: AdminView) -> HttpResponse:
    """The response to one request line (``GET /path HTTP/1.1``) on ``surface``."""
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return HttpResponse(400, b"malformed request line\n")
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if path not in _PATHS[surface]:
        return HttpResponse(404, f"no {path} on the {surface.value} port\n".encode())
    if method != "GET":
        return HttpResponse(405, f"{method} not allowed, use GET\n".encode())
    if path == "/healthz/ready":
        blockers = view.readiness_blockers()
        if not blockers:
            return HttpResponse(200, b"ready\n")
        return HttpResponse(500, f"not ready, pending: {', '.join(blockers)}\n".encode())
    if path == "/config_dump":
        dump = json.dumps(view.config_dump(), indent=2, sort_keys=True) + "\n"
        return HttpResponse(200, dump.encode(), "application/json")
    if path == "/":
        listing = "".join(f"{p}\n" for p in sorted(set().union(*_PATHS.values())))
        return HttpResponse(200, listing.encode())
    body, content_type = view.metrics()
    return HttpResponse(200, body, content_type)


class AdminServers:
    """Serves the three surfaces until `close`; binding waits while a port is taken."""

    def __init__(self, settings: ZtunnelSettings, view: AdminView) -> None:
        self._settings = settings
        self._view = view
        self._addrs = {Surface.ADMIN: settings.admin_addr, Surface.METRICS: settings.metrics_addr,
                       Surface.READINESS: settings.readiness_addr}
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.bound: dict[Surface, HostPort] = {}
        """Where each surface listens once bound (the real port if 0 was asked for)."""

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for surface, addr in self._addrs.items():
            self._tasks.append(loop.create_task(self._bind(surface, addr), name=f"bind-{surface}"))

    async def close(self) -> None:
        """Stop binding and close every listener (so a successor ztunnel can take the ports)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _bind(self, surface: Surface, addr: HostPort) -> None:
        handler = self._handler(surface)
        warned = False
        while True:
            try:
                server = await asyncio.start_server(handler, addr.host, addr.port,
                                                    reuse_address=True,
                                                    limit=self._settings.http_max_head)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    log.error("cannot serve %s on %s: %s", surface.value, addr, exc.strerror)
                    return
                if not warned:
                    log.warning("%s port %s is taken (a ztunnel being replaced?); retrying",
                                surface.value, addr)
                    warned = True
                await asyncio.sleep(self._settings.admin_bind_retry)
                continue
            self._servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            self.bound[surface] = HostPort(host, port)
            log.info("serving %s on %s", surface.value, self.bound[surface])
            return

    def _handler(self, surface: Surface) -> Callable[
            [asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                response = await self._read_and_respond(surface, reader)
                writer.write(response.encode())
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass  # the client went away; nothing to answer
            finally:
                writer.close()
        return handle

    async def _read_and_respond(self, surface: Surface,
                                reader: asyncio.StreamReader) -> HttpResponse:
        try:
            async with asyncio.timeout(self._settings.http_request_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return HttpResponse(408, b"request head not received in time\n")
        except asyncio.LimitOverrunError:
            return HttpResponse(431, b"request head too large\n")
        if len(head) > self._settings.http_max_head:
            return HttpResponse(431, b"request head too large\n")
        return respond(surface, head.split(b"\r\n", 1)[0], self._view)
