"""Helpers of the HBONE tests: the test PKI, a loopback HBONE server rig, apps and pollers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvloop

from inmesh.hbone import (
    ConnectRequest,
    HbonePool,
    HboneSettings,
    HboneStream,
    PoolKey,
    StreamDone,
    Target,
    client_context,
    serve_hbone,
    server_context,
)
from inmesh.identity import SpiffeId

from .certs import Authority, Credential

T = TypeVar("T")

TEST_TIMEOUT = 20.0
"""Upper bound of one async test; a hang fails instead of blocking the suite."""

CLIENT_ID = SpiffeId("cluster.local", "shop", "web")
SERVER_ID = SpiffeId("cluster.local", "shop", "db")
OTHER_ID = SpiffeId("cluster.local", "shop", "cache")
FOREIGN_ID = SpiffeId("other.domain", "shop", "web")
LOCAL_IP = "127.0.0.1"


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    """Run ``coro`` on uvloop (as the proxy does), bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return uvloop.run(bounded())


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Pki:
    """The mesh root, a foreign root, and the credentials the tests present."""

    root: Authority
    foreign_root: Authority
    client: Credential
    server: Credential
    other_server: Credential
    expired_client: Credential
    foreign_client: Credential
    other_domain_client: Credential

    @classmethod
    def create(cls) -> Pki:
        root, foreign = Authority.create("mesh root"), Authority.create("foreign root")
        return cls(
            root=root,
            foreign_root=foreign,
            client=root.issue(CLIENT_ID.uri),
            server=root.issue(SERVER_ID.uri, dns=("db.shop.svc",)),
            other_server=root.issue(OTHER_ID.uri),
            expired_client=root.issue(CLIENT_ID.uri, expired=True),
            foreign_client=foreign.issue(CLIENT_ID.uri, roots=root.cert_pem),
            other_domain_client=root.issue(FOREIGN_ID.uri),
        )

    def server_ctx(self, cred: Credential | None = None) -> ssl.SSLContext:
        cred = cred or self.server
        return server_context(cred.chain_pem, cred.key_pem, cred.roots_pem)

    def client_ctx(self, cred: Credential | None = None) -> ssl.SSLContext:
        cred = cred or self.client
        return client_context(cred.chain_pem, cred.key_pem, cred.roots_pem)


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets over loopback."""
    loop = asyncio.get_running_loop()
    with socket.create_server((LOCAL_IP, 0)) as lsn:
        lsn.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(lsn))
        await loop.sock_connect(client, lsn.getsockname())
        server, _ = await accept
        server.setblocking(False)
        return client, server


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while data := await loop.sock_recv(sock, 1 << 16):
        chunks.append(data)
    return b"".join(chunks)


async def read_stream(stream: HboneStream) -> bytes:
    """Everything until END_STREAM, acknowledging each chunk as it is consumed."""
    chunks = []
    while data := await stream.read():
        chunks.append(data)
        stream.acknowledge(len(data))
    return b"".join(chunks)


Handler = Callable[[socket.socket], Awaitable[None]]


async def echo(sock: socket.socket) -> None:
    """The app: echo until EOF, then half-close back."""
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(sock, 1 << 16):
        await loop.sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


@dataclass
class Rig:
    """An HBONE server on loopback whose upstream is an in-process app listener.

    ``hbone`` is where clients dial; ``app`` the port CONNECTs should target. Every accepted
    HBONE connection runs `serve_hbone`; ``accepted`` counts them (one per TLS handshake).
    """

    hbone: Target
    app: Target
    done: list[StreamDone] = field(default_factory=list)
    accepted: int = 0
    requests: list[ConnectRequest] = field(default_factory=list)
    app_conns: list[socket.socket] = field(default_factory=list)
    finished: int = 0
    """Served connections that have ended."""
    draining: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    """Done by `drain_existing`; each accepted connection gets the one current at its accept."""

    def drain_existing(self) -> None:
        """Drain the connections accepted so far (GOAWAY on the next loop turn); later ones
        are served normally."""
        self.draining.set_result(None)
        self.draining = asyncio.get_running_loop().create_future()

    def key(self, source: SpiffeId = CLIENT_ID, dest: SpiffeId = SERVER_ID) -> PoolKey:
        return PoolKey(source, dest, LOCAL_IP, self.hbone)


async def plain_socket() -> socket.socket:
    """A `MakeSocket` that leaves connecting to the pool."""
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


@contextlib.asynccontextmanager
async def rig(pki: Pki, app: Handler = echo, server_ctx: ssl.SSLContext | None = None,
              settings: HboneSettings | None = None,
              open_upstream: Callable[[ConnectRequest], Awaitable[socket.socket]] | None = None,
              ) -> AsyncIterator[Rig]:
    """Run an app listener and an HBONE listener until the block exits, then stop both."""
    loop = asyncio.get_running_loop()
    ctx = server_ctx or pki.server_ctx()
    app_lsn = socket.create_server((LOCAL_IP, 0))
    hb_lsn = socket.create_server((LOCAL_IP, 0))
    for s in (app_lsn, hb_lsn):
        s.setblocking(False)
    r = Rig(Target(LOCAL_IP, hb_lsn.getsockname()[1]), Target(LOCAL_IP, app_lsn.getsockname()[1]))

    async def default_upstream(request: ConnectRequest) -> socket.socket:
        r.requests.append(request)
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    async def serve_app() -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                conn, _ = await loop.sock_accept(app_lsn)
                r.app_conns.append(conn)
                tg.create_task(_app_conn(app, conn))

    async def serve_one(conn: socket.socket) -> None:
        await serve_hbone(conn, ctx, [LOCAL_IP], "cluster.local",
                          open_upstream or default_upstream, r.done.append, settings,
                          r.draining)
        r.finished += 1

    async def serve_hbone_listener() -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                conn, _ = await loop.sock_accept(hb_lsn)
                r.accepted += 1
                tg.create_task(serve_one(conn))

    tasks = [asyncio.create_task(serve_app()), asyncio.create_task(serve_hbone_listener())]
    try:
        yield r
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        app_lsn.close()
        hb_lsn.close()
        for conn in r.app_conns:
            conn.close()


async def _app_conn(app: Handler, conn: socket.socket) -> None:
    try:
        await app(conn)
    except OSError:
        pass  # the tests that reset connections expect the app to see errors
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def pool(settings: HboneSettings | None = None) -> AsyncIterator[HbonePool]:
    p = HbonePool(settings)
    try:
        yield p
    finally:
        await p.close()


async def open_stream(p: HbonePool, r: Rig, pki: Pki, ctx: ssl.SSLContext | None = None,
                      expected: SpiffeId = SERVER_ID, target: Target | str | None = None,
                      key: PoolKey | None = None) -> HboneStream:
    return await p.open(key or r.key(), plain_socket, ctx or pki.client_ctx(), [expected],
                        target if target is not None else r.app)


async def echo_roundtrip(p: HbonePool, r: Rig, pki: Pki, payload: bytes = b"ping") -> bytes:
    """Open a tunnel through ``r``, send ``payload``, half-close, return what came back."""
    stream = await open_stream(p, r, pki)
    await stream.write(payload)
    stream.close_write()
    return await read_stream(stream)


class RawH2:
    """A bare HTTP/2 client over TLS built on h2 directly, to send what our pool never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection

        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.events: list[Any] = []

    @classmethod
    async def connect(cls, target: Target, ctx: ssl.SSLContext) -> RawH2:
        reader, writer = await asyncio.open_connection(target.ip, target.port, ssl=ctx,
                                                       server_hostname="")
        raw = cls(reader, writer)
        await raw.flush()
        return raw

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def request(self, headers: list[tuple[str, str]], end_stream: bool = False) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        await self.flush()
        return sid

    async def next_event(self, kind: type, stream_id: int) -> Any:
        """Read until an event of ``kind`` for ``stream_id`` arrives."""
        while True:
            for i, event in enumerate(self.events):
                if isinstance(event, kind) and getattr(event, "stream_id", None) == stream_id:
                    return self.events.pop(i)
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            self.events.extend(self.conn.receive_data(data))
            await self.flush()

    async def status(self, stream_id: int) -> int:
        import h2.events

        event = await self.next_event(h2.events.ResponseReceived, stream_id)
        return int(dict(event.headers)[b":status"])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
