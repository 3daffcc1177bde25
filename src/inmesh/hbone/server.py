"""Inbound HBONE: serve one accepted TCP connection (TLS, HTTP/2, one tunnel per CONNECT).

`serve_hbone` runs until that connection ends. Per stream: the core answers 400 by itself for
anything but a CONNECT to one of ``local_ips`` on a non-proxy port; otherwise ``open_upstream``
(the proxy's transparent socket from the peer's IP) is awaited, then 200 and the relay, or 503
(or the status of an `UpstreamRefused`). A bad stream ends only itself; a bad handshake only its
connection. Reference istio-inpod.md section 6.3.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from h2.errors import ErrorCodes

from inmesh.errors import InmeshError
from inmesh.hbone._shell import H2Shell
from inmesh.hbone._sockets import ensure_connected, release
from inmesh.hbone.errors import UpstreamRefused
from inmesh.hbone.headers import Header, Target, canonical_ip
from inmesh.hbone.protocol import ServerConnection
from inmesh.hbone.relay import RelayCounts, relay_socket_stream
from inmesh.hbone.settings import HboneSettings
from inmesh.hbone.stream import HboneStream
from inmesh.hbone.tls import peer_identity
from inmesh.identity import SpiffeId

log = logging.getLogger(__name__)
_Shell = H2Shell[ServerConnection]


@dataclass(frozen=True)
class ConnectRequest:
    """A valid CONNECT, as ``open_upstream`` sees it."""

    target: Target
    """Where the tunnel goes: one of this pod's IPs and the app's port."""
    peer_identity: SpiffeId
    """The verified SPIFFE ID of the client proxy's workload."""
    peer_addr: Target
    """TCP source of the HBONE connection (the client pod's IP): the transparent source."""
    headers: tuple[Header, ...]
    """Regular request headers (forwarded, baggage, traceparent, ...)."""
    stream_id: int

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass(frozen=True)
class StreamDone:
    """What happened to one stream, for metrics and access logs."""

    request: ConnectRequest
    status: int
    """200, what the CONNECT was refused with, or 0 if the client reset it first."""
    to_peer: int = 0
    """Bytes from the upstream app to the HBONE peer."""
    from_peer: int = 0
    """Bytes from the HBONE peer to the upstream app."""
    error: str | None = None
    """Why the tunnel did not end cleanly, or None."""


OpenUpstream = Callable[[ConnectRequest], Awaitable[socket.socket]]


async def serve_hbone(sock: socket.socket, ssl_ctx: ssl.SSLContext, local_ips: Collection[str],
                      trust_domain: str, open_upstream: OpenUpstream,
                      on_stream_done: Callable[[StreamDone], None] | None = None,
                      settings: HboneSettings | None = None,
                      drain: asyncio.Future[None] | None = None) -> None:
    """Serve one accepted connection until it ends; takes ownership of ``sock``.

    ``open_upstream`` returns a socket for the request, connected or not (it is then connected
    to ``request.target`` within ``connect_timeout``). Once ``drain`` is done, the connection
    goes away gracefully: GOAWAY, the tunnels it has finish, new CONNECTs are refused
    (REFUSED_STREAM: the client retries elsewhere), and it closes after the last tunnel.
    Never raises but `CancelledError`, on which every tunnel is reset and the connection
    dropped.
    """
    settings = settings or HboneSettings()
    loop = asyncio.get_running_loop()
    try:
        address = sock.getpeername()
    except OSError as exc:
        log.info("HBONE: accepted connection already gone: %s", exc.strerror)
        sock.close()
        return
    peer = Target(canonical_ip(address[0]), address[1])
    label = f"from {peer}"
    ips = frozenset(canonical_ip(ip) for ip in local_ips)
    async with asyncio.TaskGroup() as tasks:
        served = _Served(peer, open_upstream, on_stream_done, settings)
        shell = H2Shell(ServerConnection(settings, loop.time(), ips),
                        lambda so: peer_identity(so, trust_domain=trust_domain), label,
                        on_connect=lambda stream: served.spawn(tasks, shell, stream))
        try:
            await loop.connect_accepted_socket(lambda: shell, sock, ssl=ssl_ctx,
                                               ssl_handshake_timeout=settings.handshake_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.info("HBONE %s: TLS handshake failed: %s", label, exc)
            release(sock)
            return
        def go_away(_: asyncio.Future[None]) -> None:
            shell.drain()

        if drain is not None:
            drain.add_done_callback(go_away)  # already done: on the next loop turn
        try:
            await shell.closed
        except asyncio.CancelledError:
            shell.abort()
            raise
        finally:
            if drain is not None:
                drain.remove_done_callback(go_away)


class _Served:
    """The streams of one connection: each runs as its own task and fails alone."""

    def __init__(self, peer: Target, open_upstream: OpenUpstream,
                 on_done: Callable[[StreamDone], None] | None, settings: HboneSettings) -> None:
        self.peer, self.open_upstream, self.on_done = peer, open_upstream, on_done
        self.settings = settings

    def spawn(self, tasks: asyncio.TaskGroup, shell: _Shell, stream: HboneStream) -> None:
        assert stream.head is not None  # server streams always carry their CONNECT head
        request = ConnectRequest(stream.head.target, stream.peer_identity, self.peer,
                                 stream.head.headers, stream.stream_id)
        tasks.create_task(self._guarded(shell, stream, request))

    async def _guarded(self, shell: _Shell, stream: HboneStream,
                       request: ConnectRequest) -> None:
        try:
            done = await self._serve(shell, stream, request)
        except Exception as exc:  # a bug in one stream must not end the others
            log.exception("HBONE %s: stream %d failed", shell.label, stream.stream_id)
            stream.reset(ErrorCodes.INTERNAL_ERROR)
            done = StreamDone(request, 500, error=repr(exc))
        if self.on_done is not None:
            try:
                self.on_done(done)
            except Exception:  # a metrics bug must not cancel the connection's other streams
                log.exception("HBONE %s: on_stream_done failed", shell.label)

    async def _serve(self, shell: _Shell, stream: HboneStream,
                     request: ConnectRequest) -> StreamDone:
        try:
            upstream = await self.open_upstream(request)
        except UpstreamRefused as exc:
            return self._refuse(shell, stream, request, exc.status, str(exc))
        except (OSError, InmeshError) as exc:
            return self._refuse(shell, stream, request, 503, f"upstream: {exc}")
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await ensure_connected(upstream, request.target)
        except (OSError, TimeoutError) as exc:
            upstream.close()
            return self._refuse(shell, stream, request, 503,
                                f"connect to {request.target}: {exc or 'timed out'}")
        except BaseException:
            upstream.close()
            raise
        if stream.error is not None:  # the client gave up while we connected
            upstream.close()
            return StreamDone(request, 0, error=str(stream.error))
        shell.accept(stream)
        counts: RelayCounts = await relay_socket_stream(upstream, stream,
                                                        self.settings.relay_chunk)
        error = str(stream.error) if stream.error is not None else None
        return StreamDone(request, 200, counts.to_stream, counts.from_stream, error)

    @staticmethod
    def _refuse(shell: _Shell, stream: HboneStream, request: ConnectRequest, status: int,
                reason: str) -> StreamDone:
        log.info("HBONE %s: CONNECT %s answered %d: %s", shell.label, request.target, status,
                 reason)
        if stream.error is None:
            shell.refuse(stream, status)
        return StreamDone(request, status, error=reason)
