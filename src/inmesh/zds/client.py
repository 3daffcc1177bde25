"""ztunnel's ZDS client: connects to the node agent, says Hello, and serves its requests forever.

Every request gets exactly one Ack, nothing is sent unsolicited. A protocol error by the agent
is NACKed and the connection dropped and re-made (Istio's ztunnel exits instead, see
`inmesh.zds.protocol`); running proxies are never touched by a disconnect, only by requests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Protocol

from inmesh.errors import InmeshError
from inmesh.netns import is_netns_fd
from inmesh.zds import _seqpacket
from inmesh.zds.messages import WorkloadInfo
from inmesh.zds.protocol import (
    Abort,
    Acknowledge,
    DrainProxy,
    ReconcileProxies,
    StartProxy,
    ZtunnelCommand,
    ZtunnelConnection,
    ZtunnelState,
)

__all__ = ["WorkloadHandler", "ZdsClient", "ZdsClientSettings"]

log = logging.getLogger(__name__)


class WorkloadHandler(Protocol):
    """What ztunnel does with the agent's requests. Raise an InmeshError to NACK with its text."""

    async def add_workload(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        """Start (or keep) the proxy of `uid`. Takes ownership of `netns_fd`, also on error."""

    async def del_workload(self, uid: str) -> None:
        """Drain the proxy of `uid` immediately."""

    async def snapshot_done(self, keep: frozenset[str]) -> None:
        """Drain every proxy whose uid is not in `keep`."""

    def connection_changed(self, connected: bool) -> None:
        """True when a connection is up (Hello sent), False when it ends. The handler starts out
        disconnected; it is ready only once connected and `snapshot_done` has run since."""


@dataclass(frozen=True)
class ZdsClientSettings:
    initial_backoff: float = 0.01
    """Seconds before the first reconnect attempt after a failure (Istio: 10 ms): the agent is
    usually just restarting."""

    max_backoff: float = 15.0
    """Cap, in seconds, of the doubling reconnect delay (Istio's value): bounds how long pods on
    the node wait for ztunnel after a long agent outage."""


class ZdsClient:
    """Keeps one connection to the agent at `path` and hands its requests to `handler`."""

    def __init__(
        self,
        path: str,
        handler: WorkloadHandler,
        settings: ZdsClientSettings = ZdsClientSettings(),
    ) -> None:
        self.path = path
        self._handler = handler
        self._settings = settings

    async def run(self) -> None:
        """Connect, serve, reconnect with exponential backoff; returns only by cancellation.

        The backoff resets after a connection that delivered its snapshot; after one that did
        not, it keeps growing, so an agent that keeps rejecting us is not hammered."""
        backoff = self._settings.initial_backoff
        while True:
            if await self._connect_and_serve():
                backoff = self._settings.initial_backoff
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.max_backoff)

    async def _connect_and_serve(self) -> bool:
        """One connection; True if it got as far as a completed snapshot."""
        sock = _seqpacket.new_socket()
        try:
            try:
                await asyncio.get_running_loop().sock_connect(sock, self.path)
            except OSError as exc:
                log.info("ZDS connect to %s failed: %s", self.path, exc)
                return False
            return await self._serve(sock)
        finally:
            sock.close()

    async def _serve(self, sock: socket.socket) -> bool:
        conn = ZtunnelConnection()
        connected = ready = False
        try:
            await _seqpacket.send_record(sock, conn.hello())
            connected = True
            self._handler.connection_changed(True)
            while conn.state is not ZtunnelState.CLOSED:
                record = await _seqpacket.recv_record(sock)
                if record.eof:
                    log.info("ZDS connection to %s closed by the agent", self.path)
                    break
                command = conn.request_received(
                    record.data, fd_count=len(record.fds), truncated=record.truncated
                )
                error, fatal = await self._perform(command, record.fds)
                await _seqpacket.send_record(sock, conn.reply(error))
                if fatal:
                    break
                ready = ready or isinstance(command, ReconcileProxies)
        except OSError as exc:
            log.info("ZDS connection to %s failed: %s", self.path, exc)
        finally:
            if connected:
                self._handler.connection_changed(False)
        return ready

    async def _perform(self, command: ZtunnelCommand, fds: tuple[int, ...]) -> tuple[str, bool]:
        """Carry out one command; return (NACK text or "", whether to drop the connection)."""
        handed_over: tuple[int, ...] = ()
        try:
            match command:
                case StartProxy(uid=uid, info=info):
                    if not is_netns_fd(fds[0]):
                        return f"the fd sent with AddWorkload for {uid} is not a netns", False
                    handed_over = fds
                    await self._handler.add_workload(uid, info, fds[0])
                case DrainProxy(uid=uid):
                    await self._handler.del_workload(uid)
                case ReconcileProxies(keep=keep):
                    await self._handler.snapshot_done(keep)
                case Acknowledge():
                    pass
                case Abort(reason=reason):
                    log.warning("ZDS protocol error by the agent on %s: %s", self.path, reason)
                    return reason, True
        except InmeshError as exc:
            log.warning("ZDS %r failed: %s", command, exc)
            # A failed reconcile would leave us unready for good: reconnect for a fresh snapshot.
            return str(exc) or type(exc).__name__, isinstance(command, ReconcileProxies)
        except Exception as exc:  # a handler bug must not stop the client: NACK and reconnect
            log.exception("ZDS handler failed on %r", command)
            return f"internal error in ztunnel: {exc!r}", True
        finally:
            _seqpacket.close_fds([fd for fd in fds if fd not in handed_over])
        return "", False
