"""The agent's end of one accepted ZDS connection: an `AgentConnection` driven by asyncio.

A reader callback (add_reader) feeds every record to the state machine at once, so EOF and
unsolicited records are noticed immediately; one sender task sends the snapshot and then the
queued requests, exactly one in flight. Any failure closes this connection only, and fails every
request still waiting on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inmesh.errors import InmeshError, LocalProtocolError
from inmesh.zds import _seqpacket
from inmesh.zds.errors import ZdsNotConnected, ZdsTimeout
from inmesh.zds.messages import (
    Ack,
    AddWorkload,
    DelWorkload,
    KeepWorkload,
    SnapshotSent,
    WorkloadInfo,
    WorkloadRequest,
)
from inmesh.zds.protocol import (
    AckReceived,
    AckTimedOut,
    AgentConnection,
    AgentEvent,
    HelloReceived,
    HelloTimedOut,
    KeepaliveDue,
    PeerClosed,
    PeerViolated,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotEntry:
    """One pod of the agent's snapshot: sent as Add with `netns_fd`, or as Keep if it is None."""

    uid: str
    info: WorkloadInfo
    netns_fd: int | None


@dataclass(frozen=True)
class LinkSettings:
    ack_timeout: float
    write_timeout: float
    keepalive_interval: float
    queue_size: int


@dataclass
class _Job:
    request: WorkloadRequest
    fd: int | None = None  # our own dup, closed once sent or dropped
    done: asyncio.Future[Ack] | None = None  # None for snapshot entries: nobody waits on them

    def fail(self, error: InmeshError) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(error)
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            _seqpacket.close_fds([self.fd])
            self.fd = None


class AgentLink:
    """One ztunnel connection. `request` queues a request and returns its ack."""

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        snapshot: Callable[[], Sequence[SnapshotEntry]],
        settings: LinkSettings,
        on_closed: Callable[[AgentLink], None],
    ) -> None:
        self.name = name
        self._sock = sock
        self._snapshot = snapshot
        self._settings = settings
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._proto = AgentConnection(
            self._loop.time(),
            ack_timeout=settings.ack_timeout,
            keepalive_interval=settings.keepalive_interval,
        )
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(settings.queue_size)
        self._hello: asyncio.Future[int] = self._loop.create_future()
        self._current: _Job | None = None
        self._waiter: asyncio.Future[Ack] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._on_readable)
        self._rearm()
        self._task = asyncio.create_task(self._run(), name=f"zds-{name}")

    @property
    def greeted(self) -> bool:
        """True once the peer said Hello: only then is it a ztunnel that may receive Adds."""
        return self._hello.done() and not self._hello.cancelled() and (
            self._hello.exception() is None
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, request: AddWorkload | DelWorkload, fd: int | None) -> Ack:
        """Queue `request` (with a dup of `fd`) behind the snapshot and earlier requests."""
        if self._closed:
            raise ZdsNotConnected(f"ztunnel connection {self.name} is closed")
        if self._queue.full():
            raise ZdsTimeout(
                f"ztunnel connection {self.name} has {self._queue.qsize()} requests waiting; "
                f"not queueing {request!r}"
            )
        try:
            own_fd = os.dup(fd) if fd is not None else None
        except OSError as exc:
            raise LocalProtocolError(f"netns fd {fd} for {request!r}: {exc.strerror}") from exc
        done: asyncio.Future[Ack] = self._loop.create_future()
        self._queue.put_nowait(_Job(request, own_fd, done))
        return await done  # if cancelled, the sender skips the job and closes its fd

    def close(self, error: InmeshError | None = None) -> None:
        """Close the connection and fail every waiting request (idempotent)."""
        if self._closed:
            return
        self._closed = True
        error = error or ZdsNotConnected(f"ztunnel connection {self.name} closed by the agent")
        self._proto.close()
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._fd)
        self._sock.close()
        if not self._hello.done():
            self._hello.set_exception(error)
            self._hello.exception()  # retrieved: the sender may already be gone
        if self._current is not None:
            self._current.fail(error)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            job.fail(ZdsNotConnected(f"ztunnel connection {self.name} closed before "
                                     f"{job.request!r} was sent: {error}"))
        if self._task is not asyncio.current_task():
            self._task.cancel()
        self._on_closed(self)

    async def wait_closed(self) -> None:
        await asyncio.wait([self._task])

    # -- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            version = await self._hello
            log.info("ztunnel connection %s: hello, version %d", self.name, version)
            await self._send_snapshot()
            while True:
                await self._serve(await self._queue.get())
        except InmeshError as exc:
            log.warning("ztunnel connection %s closed: %s", self.name, exc)
            self.close(exc)
        except Exception as exc:  # a bug here must close this connection, not the server
            log.exception("ztunnel connection %s failed", self.name)
            self.close(ZdsNotConnected(f"ztunnel connection {self.name} failed: {exc!r}"))

    async def _send_snapshot(self) -> None:
        entries = list(self._snapshot())
        jobs = [self._snapshot_job(entry) for entry in entries]  # no await in between
        try:
            for job in jobs:
                ack = await self._send(job)
                if not ack.ok:
                    log.warning("ztunnel %s NACKed %r: %s", self.name, job.request, ack.error)
            ack = await self._send(_Job(SnapshotSent()))
            if not ack.ok:
                log.warning("ztunnel %s NACKed the end of the snapshot: %s", self.name, ack.error)
        finally:
            for job in jobs:
                job.release()
        log.info("ztunnel connection %s: snapshot of %d pods sent", self.name, len(jobs))

    def _snapshot_job(self, entry: SnapshotEntry) -> _Job:
        """Dup the fd now, before any await, so that the caller may close its own at any time."""
        fd = None
        if entry.netns_fd is not None:
            try:
                fd = os.dup(entry.netns_fd)
            except OSError as exc:
                log.warning("snapshot netns fd %d of pod %s unusable (%s): sending Keep",
                            entry.netns_fd, entry.uid, exc.strerror)
        request = AddWorkload(entry.uid, entry.info) if fd is not None else KeepWorkload(entry.uid)
        return _Job(request, fd)

    async def _serve(self, job: _Job) -> None:
        assert job.done is not None
        if job.done.done():  # the caller gave up while it was queued
            job.release()
            return
        ack = await self._send(job)
        if not job.done.done():
            job.done.set_result(ack)

    async def _send(self, job: _Job) -> Ack:
        self._current = job
        waiter: asyncio.Future[Ack] = self._loop.create_future()
        self._waiter = waiter
        data = self._proto.send(job.request, self._loop.time())
        self._rearm()
        fds = [job.fd] if job.fd is not None else []
        try:
            async with asyncio.timeout(self._settings.write_timeout):
                await _seqpacket.send_record(self._sock, data, fds)
        except TimeoutError:
            raise ZdsTimeout(f"could not send {job.request!r} to ztunnel {self.name} within "
                             f"{self._settings.write_timeout}s") from None
        except OSError as exc:
            raise ZdsNotConnected(f"sending to ztunnel {self.name} failed: {exc}") from exc
        finally:
            job.release()
        try:
            return await waiter
        finally:
            self._current = None

    # -- receiving and timers ----------------------------------------------------------------

    def _on_readable(self) -> None:
        while not self._closed and (record := _seqpacket.try_recv(self._sock)) is not None:
            _seqpacket.close_fds(record.fds)
            if record.eof:
                self._handle(self._proto.eof_received())
            else:
                self._handle(self._proto.record_received(
                    record.data, self._loop.time(), fd_count=len(record.fds),
                    truncated=record.truncated,
                ))
        self._rearm()

    def _on_timer(self) -> None:
        self._timer = None
        event = self._proto.timer_expired(self._loop.time())
        if event is not None:
            self._handle(event)
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = None if self._closed else self._proto.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _handle(self, event: AgentEvent) -> None:
        match event:
            case HelloReceived(version=version):
                self._hello.set_result(version)
            case AckReceived(ack=ack):
                if self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result(ack)
            case KeepaliveDue():
                log.debug("ztunnel connection %s: keepalive probe", self.name)
                self._on_readable()  # Istio's keepalive read, without waiting (see settings)
            case PeerClosed():
                log.info("ztunnel connection %s: closed by ztunnel", self.name)
                self.close(ZdsNotConnected(f"ztunnel connection {self.name} closed by ztunnel"))
            case PeerViolated(error=error):
                log.warning("ztunnel connection %s: protocol error: %s", self.name, error)
                self.close(ZdsNotConnected(f"ztunnel connection {self.name} dropped: {error}"))
            case HelloTimedOut():
                self._timed_out("no hello from ztunnel")
            case AckTimedOut(request=request):
                self._timed_out(f"no ack for {request!r}")

    def _timed_out(self, what: str) -> None:
        text = f"{what} within {self._settings.ack_timeout}s on connection {self.name}"
        log.warning("ztunnel connection %s dropped: %s", self.name, text)
        self.close(ZdsTimeout(text))
