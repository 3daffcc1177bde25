"""In-pod socket factory: every socket of one pod is created inside that pod's network namespace.

A socket keeps the namespace it was created in, so `PodSockets` keeps ONE `NetnsWorker` thread
living in the pod's netns and creates listeners and upstream sockets there; the event loop then
uses them from its own thread (connect, accept and I/O need no namespace switch). Every socket
gets SO_MARK (so the in-pod rules let its packets through) and TCP_NODELAY.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from inmesh.errors import KernelError
from inmesh.netns import NetnsWorker
from inmesh.ztunnel.addressing import (
    SOCKADDR_IN6_SIZE,
    SOCKADDR_IN_SIZE,
    Endpoint,
    endpoint_of,
    parse_sockaddr_in,
    parse_sockaddr_in6,
)
from inmesh.ztunnel.settings import ProxySettings

log = logging.getLogger(__name__)
T = TypeVar("T")

SOL_IP = 0
SOL_IPV6 = 41
SO_MARK = 36
IP_FREEBIND = 15
IP_TRANSPARENT = 19
IP_BIND_ADDRESS_NO_PORT = 24
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80


def original_dst(sock: socket.socket) -> Endpoint:
    """Where the client meant to go before REDIRECT: SO_ORIGINAL_DST, then the IPv6 variant,
    then (no NAT entry: the listener was reached directly) the socket's own local address."""
    try:
        return parse_sockaddr_in(sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE))
    except OSError:
        pass
    try:
        raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, SOCKADDR_IN6_SIZE)
        return parse_sockaddr_in6(raw)
    except OSError:
        pass
    return endpoint_of(sock.getsockname())


def tune_stream(sock: socket.socket, settings: ProxySettings) -> None:
    """Non-blocking, TCP_NODELAY and keepalive: what every relayed socket gets (Istio's values)."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, settings.keepalive_idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, settings.keepalive_interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.keepalive_count)


class PodSockets:
    """Creates the sockets of one pod on a thread that lives in the pod's netns.

    ``netns_fd`` is borrowed (the worker keeps its own duplicate). ``label`` names the pod in
    errors and thread names. `close` ends the thread; sockets already made stay valid.

    A socket belongs to the netns it was created in, and only ``socket()`` itself must run
    there: upstream sockets are taken from a few spares the thread made ahead (in batches,
    per address family) and configured on the caller's thread, so a connection does not wait
    for a thread hand-off.
    """

    def __init__(self, netns_fd: int, settings: ProxySettings, label: str) -> None:
        self._settings = settings
        self._label = label
        self._worker = NetnsWorker(netns_fd, name=f"pod-{label}")
        self._spares: dict[int, collections.deque[socket.socket]] = {}
        self._refilling: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def _call(self, fn: Callable[[], T]) -> T:
        fut = self._worker.submit(fn)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_close_orphans)  # the worker may still deliver sockets
            raise

    async def listeners(self, ports: tuple[int, ...]) -> list[socket.socket]:
        """Bind and listen on every port, dual stack ``[::]`` (``0.0.0.0`` if the pod has no
        IPv6). All or nothing: on failure none stays open and `KernelError` names the port."""
        return await self._call(lambda: make_listeners(ports, self._settings, self._label))

    async def upstream(self, dst: Endpoint) -> socket.socket:
        """A marked, unconnected socket for ``dst``; its source will be the pod's own IP."""
        return prepare_upstream(await self._spare(dst), dst, self._settings, self._label)

    async def transparent_upstream(self, src_ip: str, dst: Endpoint) -> socket.socket:
        """A marked socket bound to ``src_ip`` (not a local address) with IP_TRANSPARENT and
        IP_FREEBIND, so the app at ``dst`` sees the original client as its peer."""
        return prepare_transparent(await self._spare(dst), src_ip, dst, self._settings,
                                   self._label)

    async def _spare(self, dst: Endpoint) -> socket.socket:
        family = socket.AF_INET6 if dst.is_v6 else socket.AF_INET
        spares = self._spares.setdefault(family, collections.deque())
        if not spares:
            made = await self._call(lambda: new_sockets(family, SPARE_BATCH, self._label))
            if self._closed:
                for sock in made:
                    sock.close()
                raise _error(self._label, "pod sockets closed", OSError(errno.EBADF, "closed"))
            spares.extend(made)
        sock = spares.popleft()
        if len(spares) < SPARE_LOW and family not in self._refilling:
            self._refilling.add(family)
            task = asyncio.get_running_loop().create_task(self._refill(family))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return sock

    async def _refill(self, family: int) -> None:
        try:
            made = await self._call(lambda: new_sockets(family, SPARE_BATCH, self._label))
        except KernelError as exc:  # the next connection asks again, and fails if it must
            log.debug("%s", exc)
            return
        finally:
            self._refilling.discard(family)
        if self._closed:
            for sock in made:
                sock.close()
            return
        self._spares.setdefault(family, collections.deque()).extend(made)

    def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        self._worker.close()
        for spares in self._spares.values():
            while spares:
                spares.popleft().close()


SPARE_BATCH = 8
"""Sockets a pod's netns thread makes at a time, per address family."""
SPARE_LOW = 3
"""Spares left when the next batch is made, in the background."""


# -- run on the worker thread, inside the pod netns -----------------------------------------


def make_listeners(ports: tuple[int, ...], settings: ProxySettings,
                   label: str) -> list[socket.socket]:
    """Listeners on every port, all or nothing (see `PodSockets.listeners`)."""
    made: list[socket.socket] = []
    try:
        for port in ports:
            made.append(make_listener(port, settings, label))
    except BaseException:
        for s in made:
            s.close()
        raise
    return made


def make_listener(port: int, settings: ProxySettings, label: str) -> socket.socket:
    """``[::]:port`` dual stack, or ``0.0.0.0:port`` if the kernel has no IPv6 for us."""
    try:
        return _bind_listener(socket.AF_INET6, "::", port, settings)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise _error(label, f"cannot listen on [::]:{port}", exc) from exc
    try:
        return _bind_listener(socket.AF_INET, "0.0.0.0", port, settings)
    except OSError as exc:
        raise _error(label, f"cannot listen on 0.0.0.0:{port}", exc) from exc


def _bind_listener(family: int, host: str, port: int, settings: ProxySettings) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, settings.packet_mark)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _best_effort(sock, SOL_IPV6, IPV6_TRANSPARENT)
        _best_effort(sock, SOL_IP, IP_TRANSPARENT)
        sock.bind((host, port))
        sock.listen(settings.listen_backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def new_sockets(family: int, count: int, label: str) -> list[socket.socket]:
    """``count`` TCP sockets of ``family``, created in the calling thread's netns."""
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            made.append(socket.socket(family, socket.SOCK_STREAM))
    except OSError as exc:
        for sock in made:
            sock.close()
        raise _error(label, "cannot create upstream sockets", exc) from exc
    return made


def prepare_upstream(sock: socket.socket, dst: Endpoint, settings: ProxySettings,
                     label: str) -> socket.socket:
    """Mark and tune ``sock`` (made in the pod netns) for ``dst``; closed on failure."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, settings.packet_mark)
        tune_stream(sock, settings)
    except OSError as exc:
        sock.close()
        raise _error(label, f"cannot create upstream socket for {dst}", exc) from exc
    return sock


def prepare_transparent(sock: socket.socket, src_ip: str, dst: Endpoint,
                        settings: ProxySettings, label: str) -> socket.socket:
    """`prepare_upstream`, then bound to the non-local ``src_ip`` ("freebind connect")."""
    sock = prepare_upstream(sock, dst, settings, label)
    if src_ip == dst.ip:
        return sock  # spoofing our own address is pointless (and would confuse routing)
    try:
        if dst.is_v6:
            sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
            sock.setsockopt(SOL_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
            sock.setsockopt(SOL_IP, IP_FREEBIND, 1)
        # Pick the source port at connect time, against the full 4-tuple.
        _best_effort(sock, SOL_IP, IP_BIND_ADDRESS_NO_PORT)
        sock.bind((src_ip, 0))
    except OSError as exc:
        # Like Istio: delivery still works, the app just sees the pod's IP as its peer.
        log.warning("pod %s: cannot bind transparent source %s for %s: %s",
                    label, src_ip, dst, exc.strerror)
    return sock


def _error(label: str, what: str, exc: OSError) -> KernelError:
    return KernelError(f"pod {label}: {what}: {exc.strerror or exc}", errno_=exc.errno)


def _close_orphans(fut: Future[Any]) -> None:
    """Close the sockets a cancelled caller will never receive."""
    if fut.cancelled() or fut.exception() is not None:
        return
    result = fut.result()
    for sock in result if isinstance(result, list) else [result]:
        sock.close()


def _best_effort(sock: socket.socket, level: int, option: int) -> None:
    try:
        sock.setsockopt(level, option, 1)
    except OSError as exc:
        log.debug("setsockopt(%d, %d) not permitted: %s", level, option, exc.strerror)
