"""Small HTTP/1.1 GETs to the node processes: the agent's unix socket and ztunnel's TCP ports.

ztunnel listens inside the node netns, so its socket is created there (`run_in_netns`) and then
used from the calling thread. One request per connection; every socket is closed.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from inmesh.errors import InmeshError, RemoteProtocolError
from inmesh.netns import run_in_netns


class EndpointUnreachable(InmeshError):
    """Nothing answered at the endpoint (not started, crashed, or still starting)."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RemoteProtocolError(f"expected JSON, got {self.body[:80]!r}") from exc

    def text(self) -> str:
        return self.body.decode(errors="replace")


def tcp_socket_in_netns(netns_path: str, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket that lives in ``netns_path`` (sockets keep the netns they were made in)."""
    return run_in_netns(netns_path, lambda: socket.socket(family, socket.SOCK_STREAM))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _NetnsConnection(http.client.HTTPConnection):
    def __init__(self, netns_path: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns_path

    def connect(self) -> None:
        sock = tcp_socket_in_netns(self._netns)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _get(conn: http.client.HTTPConnection, path: str, where: str) -> HttpReply:
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return HttpReply(resp.status, resp.read())
    except (OSError, http.client.HTTPException, InmeshError) as exc:
        raise EndpointUnreachable(f"GET {path} on {where}: {exc}") from exc
    finally:
        conn.close()


def get_unix(socket_path: str, path: str, timeout_s: float) -> HttpReply:
    """GET ``path`` from an HTTP server on a unix stream socket."""
    return _get(_UnixConnection(socket_path, timeout_s), path, socket_path)


def split_addr(addr: str) -> tuple[str, int]:
    """'127.0.0.1:15000' → ('127.0.0.1', 15000); a wildcard host becomes loopback."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return host, int(port)


def get_in_netns(netns_path: str, addr: str, path: str, timeout_s: float) -> HttpReply:
    """GET ``path`` from ``addr`` (host:port) as seen from inside ``netns_path``."""
    host, port = split_addr(addr)
    conn = _NetnsConnection(netns_path, host, port, timeout_s)
    return _get(conn, path, f"{addr} in {netns_path}")
