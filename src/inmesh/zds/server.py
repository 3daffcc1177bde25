"""The node agent's ZDS server: listens on the unix socket that ztunnels connect to.

Each new connection gets the agent's snapshot after its Hello. `add_workload` goes to the
newest connection, `del_workload` to all of them (reference 1.7, 5.3). One misbehaving
connection is closed and logged; the others and the server keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inmesh.errors import ConfigError, KernelError
from inmesh.zds import _seqpacket
from inmesh.zds._agentlink import AgentLink, LinkSettings, SnapshotEntry
from inmesh.zds.errors import ZdsNacked, ZdsNotConnected, ZdsTimeout
from inmesh.zds.messages import AddWorkload, DelWorkload, WorkloadInfo

__all__ = [
    "SnapshotEntry",
    "ZdsNacked",
    "ZdsNotConnected",
    "ZdsServer",
    "ZdsServerSettings",
    "ZdsTimeout",
]

log = logging.getLogger(__name__)

_LISTEN_BACKLOG = 16
"""Pending connections the kernel holds for us; one ztunnel per node, two during an upgrade."""

_ACCEPT_RETRY_DELAY = 0.1
"""Seconds to wait after a failed accept (e.g. EMFILE) so that the loop does not spin."""


@dataclass(frozen=True)
class ZdsServerSettings:
    ack_timeout: float = 5.0
    """Seconds to wait for ztunnel's Hello and for each ack. Istio's value; ztunnel acks at once
    except while starting a proxy. On expiry the connection is closed, because acks are matched
    by order only and a late one would be taken for the reply to the next request."""

    write_timeout: float = 5.0
    """Seconds to wait for room in the socket to send one record (Istio's write deadline). A
    ztunnel that does not read for that long is stuck; its connection is closed."""

    keepalive_interval: float = 5.0
    """Seconds of idleness after which a connection is checked for a gone peer (Istio's value).
    The reader normally sees EOF or a stray record at once; the check is Istio's 'keepalive
    read', done without waiting, as a backstop."""

    queue_size: int = 100
    """Requests that may wait per connection behind the one in flight (Istio's channel size).
    Beyond that ztunnel is not keeping up, and the request fails with ZdsTimeout at once."""

    accept_rate: float = 5.0
    """Connections accepted per second at most (Istio's limit); the first at once, the next
    ones wait in the backlog. Each connection costs a full snapshot (a dup of every pod's
    netns), so a crash-looping or hostile client cannot keep the agent busy with them."""

    def __post_init__(self) -> None:
        if not self.accept_rate > 0:
            raise ConfigError(f"ZDS accept_rate must be > 0 per second, got {self.accept_rate}")


class ZdsServer:
    """Serves ZDS on a SOCK_SEQPACKET unix socket at `path`.

    `snapshot` is called once per connection after its Hello; every entry becomes an Add (with
    a dup of its netns fd, taken before anything is sent) or a Keep, each acked, then
    SnapshotSent. Requests never take ownership of caller fds.
    """

    def __init__(
        self,
        path: str,
        snapshot: Callable[[], Sequence[SnapshotEntry]],
        settings: ZdsServerSettings = ZdsServerSettings(),
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._settings = settings
        self._links: list[AgentLink] = []
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    @property
    def connection_count(self) -> int:
        """Connections whose peer said Hello (a silent or garbage peer is not a ztunnel)."""
        return sum(1 for link in self._links if link.greeted)

    async def start(self) -> None:
        """Remove a stale socket file, listen, and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError("ZdsServer already started")
        _remove_stale_socket(self.path)
        sock = _seqpacket.new_socket()
        try:
            sock.bind(self.path)
            sock.listen(_LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise KernelError(f"cannot listen on ZDS socket {self.path}: {exc.strerror}",
                              errno_=exc.errno) from exc
        self._listener = sock
        self._accept_task = asyncio.create_task(self._accept_loop(), name=f"zds-accept {self.path}")
        log.info("ZDS server listening on %s", self.path)

    async def close(self) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.wait([self._accept_task])
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        links = list(self._links)
        for link in links:
            link.close()
        for link in links:
            await link.wait_closed()

    async def add_workload(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        """Send Add to the newest connection (behind its snapshot if that is still being sent)
        and wait for the ack. Raises ZdsNotConnected, ZdsNacked or ZdsTimeout. `netns_fd` is
        duplicated at once: the caller keeps it and may close it whenever it likes."""
        greeted = [link for link in self._links if link.greeted]
        if not greeted:
            raise ZdsNotConnected(f"no ztunnel connection to add pod {uid}")
        request = AddWorkload(uid, info)
        ack = await greeted[-1].request(request, netns_fd)
        if not ack.ok:
            raise ZdsNacked(ack.error, request)

    async def del_workload(self, uid: str) -> None:
        """Send Del to every connection and wait for all acks. Succeeds with no connection, and
        ignores connections that close meanwhile (a reconnecting ztunnel gets a snapshot)."""
        request = DelWorkload(uid)
        results = await asyncio.gather(
            *(link.request(request, None) for link in list(self._links)), return_exceptions=True
        )
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, ZdsNotConnected):
                log.info("Del of pod %s not sent: %s", uid, result)
            elif isinstance(result, BaseException):
                errors.append(result)
            elif not result.ok:
                errors.append(ZdsNacked(result.error, request))
        if errors:
            raise errors[0]

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        gap = 1.0 / self._settings.accept_rate
        next_at = loop.time()
        while True:
            if (wait := next_at - loop.time()) > 0:
                await asyncio.sleep(wait)
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as exc:
                log.warning("ZDS accept on %s failed: %s", self.path, exc)
                await asyncio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            next_at = loop.time() + gap
            sock.setblocking(False)
            name = f"#{next(self._ids)}"
            log.info("ztunnel connection %s accepted on %s", name, self.path)
            self._links.append(
                AgentLink(sock, name, self._snapshot, self._link_settings(), self._forget)
            )

    def _link_settings(self) -> LinkSettings:
        s = self._settings
        return LinkSettings(s.ack_timeout, s.write_timeout, s.keepalive_interval, s.queue_size)

    def _forget(self, link: AgentLink) -> None:
        with contextlib.suppress(ValueError):
            self._links.remove(link)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"ZDS socket path {path} exists and is not a socket; not removing it")
    os.unlink(path)

