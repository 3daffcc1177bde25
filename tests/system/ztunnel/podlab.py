"""A pod netns P with hand-written in-pod redirect rules, joined by a veth to a server netns S.

The rules are the few Istio rules the proxy relies on (reference 4.2/4.4), written inline so
these tests do not depend on the redirect package:
  nat PREROUTING  tcp, not to 127.0.0.1, not to 15008, not marked 0x539 → redirect :15006
  nat OUTPUT      ct-mark-restored 0x111 → accept; out via lo → accept;
                  tcp not marked 0x539 → redirect :15001
  mangle PREROUTING  mark 0x539 → ct mark 0x111
  mangle OUTPUT (type route)  ct mark 0x111 → meta mark = ct mark
plus ``ip rule fwmark 0x111/0xfff lookup 100 pref 32764`` and a local default route in table 100,
for IPv4 and IPv6 (the veth carries both).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import uvloop

from inmesh import netns
from tests.system.nshelpers import NetnsFactory, sh

T = TypeVar("T")

RULES = """
table inet imt_zt_nat {
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    meta l4proto tcp ip daddr != 127.0.0.1 tcp dport != 15008 meta mark & 0xfff != 0x539 \
redirect to :15006
    meta l4proto tcp ip6 daddr != ::1 tcp dport != 15008 meta mark & 0xfff != 0x539 \
redirect to :15006
  }
  chain output {
    type nat hook output priority -100; policy accept;
    meta l4proto tcp meta mark & 0xfff == 0x111 accept
    oifname "lo" accept
    meta l4proto tcp meta mark & 0xfff != 0x539 redirect to :15001
  }
}
table inet imt_zt_mangle {
  chain prerouting {
    type filter hook prerouting priority -150; policy accept;
    meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 | 0x111
  }
  chain output {
    type route hook output priority -150; policy accept;
    ct mark & 0xfff == 0x111 meta mark set ct mark
  }
}
"""


@dataclass(frozen=True)
class PodLab:
    pod: str
    server: str
    pod_ip: str
    server_ip: str
    pod_ip6: str
    server_ip6: str

    @property
    def pod_path(self) -> str:
        return NetnsFactory.path(self.pod)

    @property
    def server_path(self) -> str:
        return NetnsFactory.path(self.server)


def build_pod_lab(factory: NetnsFactory, tag: str = "") -> PodLab:
    """P (the pod, redirect rules installed) <-veth-> S (a server), both on 10.251.X.0/24."""
    x = secrets.randbelow(250) + 1
    pod, server = factory.create(f"p{tag}"), factory.create(f"s{tag}")
    lab = PodLab(pod, server, f"10.251.{x}.2", f"10.251.{x}.1", f"fd00:251:{x:x}::2",
                 f"fd00:251:{x:x}::1")
    factory.link(pod, lab.pod_ip, server, lab.server_ip)
    for name, ip in ((pod, lab.pod_ip6), (server, lab.server_ip6)):
        dev = factory.exec(name, "ip", "-o", "link", "show", "type", "veth").stdout
        factory.exec(name, "ip", "-6", "addr", "add", f"{ip}/64", "dev",
                     dev.split(":")[1].strip().split("@")[0], "nodad")
    install_inpod_rules(factory, pod)
    return lab


def install_inpod_rules(factory: NetnsFactory, pod: str) -> None:
    """The in-pod redirect rules (see the module docstring) in netns ``pod``."""
    subprocess.run([*netns.nsenter_argv(NetnsFactory.path(pod)), "nft", "-f", "-"], input=RULES,
                   text=True, check=True, capture_output=True)
    factory.exec(pod, "ip", "rule", "add", "fwmark", "0x111/0xfff", "lookup", "100", "pref",
                 "32764")
    factory.exec(pod, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    factory.exec(pod, "ip", "-6", "rule", "add", "fwmark", "0x111/0xfff", "lookup", "100",
                 "pref", "32764")
    factory.exec(pod, "ip", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")


async def http_get(node: SocketMaker, port: int, path: str) -> tuple[int, bytes]:
    loop = asyncio.get_running_loop()
    sock = await node.connect("127.0.0.1", port)
    with sock:
        await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = await read_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def until_http(node: SocketMaker, port: int, path: str, status: int,
                     within: float = 15.0) -> bytes:
    """Poll an admin endpoint until it answers ``status``; return the body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: object = None
    while loop.time() < deadline:
        try:
            code, body = await http_get(node, port, path)
            if code == status:
                return body
            last = (code, body)
        except OSError as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {status}; last: {last!r}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def listen_in(path: str, ip: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket that lives in the netns at ``path``."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(128)
        s.setblocking(False)
        return s
    return netns.run_in_netns(path, make)


class SocketMaker:
    """Makes client sockets inside one netns, on one long-lived worker thread."""

    def __init__(self, path: str) -> None:
        self._worker = netns.NetnsWorker(path, name="test-sockets")

    async def connect(self, ip: str, port: int) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            s.setblocking(False)
            return s
        sock = self._worker.call(make)
        try:
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._worker.close()


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while data := await loop.sock_recv(sock, 1 << 16):
        chunks.append(data)
    return b"".join(chunks)


class EchoServer:
    """Accepts on ``listener``; per connection reads to EOF, then echoes it all and closes (so
    a client must half-close to get its answer). Records each peer address."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.peers: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self.listener)
            self.peers.append(peer[0])
            task = loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _serve(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with conn:
            conn.setblocking(False)
            try:
                data = await read_all(conn)
                await loop.sock_sendall(conn, data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    async def close(self) -> None:
        self._accept.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(self._accept, *self._tasks, return_exceptions=True)
        self.listener.close()


async def echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read the whole answer, close."""
    loop = asyncio.get_running_loop()
    with sock:
        await loop.sock_sendall(sock, payload)
        sock.shutdown(socket.SHUT_WR)
        return await read_all(sock)


__all__ = ["EchoServer", "PodLab", "SocketMaker", "build_pod_lab", "echo_roundtrip",
           "http_get", "install_inpod_rules", "listen_in", "read_all", "run", "sh", "until_http",
           "wait_for"]
