"""Outbound HBONE: a pool of mTLS HTTP/2 connections, one CONNECT stream per tunnel.

Connections are shared by key (source identity, destination identity, source IP, destination
address), up to ``client_max_streams`` streams each; a full pool dials another connection. Openers
of a key that has no room share one dial (no handshake storm, ztunnel #864). A connection left
without streams for ``idle_timeout`` closes itself and leaves the pool. A connection whose server
drains (GOAWAY) takes no new streams, keeps its tunnels and closes after the last; a CONNECT it
refused unprocessed (REFUSED_STREAM) is retried on another connection. Sockets come from the
caller (`make_socket`), so namespaces and marks stay the proxy's business.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

from h2.errors import ErrorCodes

from inmesh.hbone._shell import H2Shell
from inmesh.hbone._sockets import ensure_connected, release
from inmesh.hbone.errors import HboneConnectionError, StreamResetError
from inmesh.hbone.headers import Header, Target
from inmesh.hbone.protocol import ClientConnection
from inmesh.hbone.settings import HboneSettings
from inmesh.hbone.stream import HboneStream
from inmesh.hbone.tls import peer_identity
from inmesh.identity import SpiffeId

log = logging.getLogger(__name__)

REFUSED_RETRIES = 3
"""How often one `HbonePool.open` retries a CONNECT a draining server refused unprocessed."""

MakeSocket = Callable[[], Awaitable[socket.socket]]
"""Returns a TCP socket for the destination, connected or not (the pool then connects it)."""


@dataclass(frozen=True)
class PoolKey:
    """Which streams may share a connection."""

    source_identity: SpiffeId
    destination_identity: SpiffeId
    source_ip: str
    destination: Target
    """The HBONE address (the destination pod's IP and 15008, or a waypoint's)."""

    def __str__(self) -> str:
        return (f"{self.source_identity}@{self.source_ip} -> "
                f"{self.destination_identity}@{self.destination}")


class HbonePool:
    """Pooled outbound HBONE connections; see the module docstring."""

    def __init__(self, settings: HboneSettings | None = None) -> None:
        self.settings = settings or HboneSettings()
        self.dials = 0
        """TCP+TLS connections attempted so far (each one a full handshake)."""
        self.retries = 0
        """CONNECTs retried because a draining server refused them unprocessed."""
        self._conns: dict[PoolKey, list[H2Shell[ClientConnection]]] = {}
        self._dialing: dict[PoolKey, asyncio.Task[H2Shell[ClientConnection]]] = {}

    def connections(self, key: PoolKey | None = None) -> int:
        """Live connections, for ``key`` or in total."""
        keys = [key] if key is not None else list(self._conns)
        return sum(1 for k in keys for s in self._conns.get(k, []) if not s.core.ended)

    async def open(self, key: PoolKey, make_socket: MakeSocket, ssl_ctx: ssl.SSLContext,
                   expected_ids: Collection[SpiffeId], authority: Target | str,
                   headers: Iterable[Header] = ()) -> HboneStream:
        """A stream tunnelled to ``authority``, answered 200 by a server whose SPIFFE ID is in
        ``expected_ids``. Raises `HboneConnectionError` (dial, TLS, connection lost),
        `PeerIdentityError` (wrong server) or `ConnectRejected` (non-200)."""
        headers = list(headers)
        refusals = 0
        while True:
            shell = self._available(key)
            if shell is None:
                shell = await self._shared_dial(key, make_socket, ssl_ctx, expected_ids)
                if shell.core.ended:
                    raise shell.failure or HboneConnectionError(f"HBONE {key}: closed at once")
                if shell.core.capacity <= 0:
                    continue  # other openers of the same dial took every slot
            try:
                return await shell.connect(authority, headers)
            except HboneConnectionError as exc:
                # Refused by a draining server, which never processed it (RFC 9113 8.7):
                # retried on another connection, a few times at most.
                cause = exc.__cause__
                if (not isinstance(cause, StreamResetError)
                        or cause.error_code != ErrorCodes.REFUSED_STREAM
                        or refusals >= REFUSED_RETRIES):
                    raise
                refusals += 1
                self.retries += 1
                log.debug("HBONE %s: CONNECT refused by a draining server, retrying", key)

    async def close(self) -> None:
        """Close every connection (GOAWAY; tunnels are reset) and forget them."""
        for task in list(self._dialing.values()):
            task.cancel()
        shells = [s for conns in self._conns.values() for s in conns]
        self._conns.clear()
        for shell in shells:
            shell.close("pool closed")
        if shells:
            await asyncio.wait([s.closed for s in shells],
                                            timeout=self.settings.handshake_timeout)
            for shell in shells:
                if not shell.closed.done():
                    shell.abort()
            # uvloop releases a transport's socket one loop turn after connection_lost.
            await asyncio.sleep(0)

    # -- internals -------------------------------------------------------------------------

    def _available(self, key: PoolKey) -> H2Shell[ClientConnection] | None:
        for shell in self._conns.get(key, []):
            if shell.core.capacity > 0:
                return shell
        return None

    async def _shared_dial(self, key: PoolKey, make_socket: MakeSocket,
                           ssl_ctx: ssl.SSLContext,
                           expected_ids: Collection[SpiffeId]) -> H2Shell[ClientConnection]:
        task = self._dialing.get(key)
        if task is None:
            task = asyncio.create_task(self._dial(key, make_socket, ssl_ctx, expected_ids),
                                       name=f"hbone-dial {key}")
            self._dialing[key] = task
            task.add_done_callback(lambda t: self._dial_done(key, t))
        return await asyncio.shield(task)

    def _dial_done(self, key: PoolKey, task: asyncio.Task[H2Shell[ClientConnection]]) -> None:
        if self._dialing.get(key) is task:
            del self._dialing[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have been cancelled

    async def _dial(self, key: PoolKey, make_socket: MakeSocket, ssl_ctx: ssl.SSLContext,
                    expected_ids: Collection[SpiffeId]) -> H2Shell[ClientConnection]:
        loop = asyncio.get_running_loop()
        expected = frozenset(expected_ids)
        shell = H2Shell(ClientConnection(self.settings, loop.time()),
                        lambda so: peer_identity(so, expected=expected),
                        f"to {key.destination}")
        self.dials += 1
        sock = await make_socket()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await ensure_connected(sock, key.destination)
            # server_hostname="" means no SNI (None is refused together with sock=).
            await loop.create_connection(lambda: shell, sock=sock, ssl=ssl_ctx,
                                         server_hostname="",
                                         ssl_handshake_timeout=self.settings.handshake_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            release(sock)
            raise HboneConnectionError(f"HBONE {key}: {exc or 'timed out'}") from exc
        except BaseException:
            release(sock)
            raise
        if shell.failure is not None:  # identity or ALPN refused; the transport is aborted
            failure = shell.failure
            raise type(failure)(f"HBONE to {key.destination}: {failure}") from failure
        self._conns.setdefault(key, []).append(shell)
        shell.closed.add_done_callback(lambda _: self._discard(key, shell))
        log.debug("HBONE %s: connected", key)
        return shell

    def _discard(self, key: PoolKey, shell: H2Shell[ClientConnection]) -> None:
        conns = self._conns.get(key)
        if conns is not None and shell in conns:
            conns.remove(shell)
            if not conns:
                del self._conns[key]
