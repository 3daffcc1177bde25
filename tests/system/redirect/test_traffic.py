"""Real packets through the rules: pod netns P joined by a veth to server netns S.

Outbound TCP from an app in P lands on P's 15001 with SO_ORIGINAL_DST = S's address; with no
listener on 15001 it is refused (fail closed); a socket carrying the proxy mark 0x539 reaches S
directly. Inbound plaintext to P lands on 15006, inbound to 15008 is not redirected.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from inmesh.constants import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PROXY_MARK
from inmesh.netns import run_in_netns
from inmesh.redirect import RedirectSpec, RuleBackend, select_backend
from tests.system.nshelpers import NetnsFactory

POD_IP, SERVER_IP, APP_PORT = "10.201.0.1", "10.201.0.2", 8080
SO_ORIGINAL_DST = 80
TIMEOUT_S = 3.0


@pytest.fixture(params=["iptables", "nftables"])
def backend(request: pytest.FixtureRequest) -> RuleBackend:
    return select_backend(request.param)


@pytest.fixture
def pair(netns_factory: NetnsFactory, backend: RuleBackend) -> tuple[str, str]:
    """(pod netns path, server netns path), the pod with its redirection applied."""
    pod, server = netns_factory.create("p"), netns_factory.create("s")
    netns_factory.link(pod, POD_IP, server, SERVER_IP)
    pod_path = netns_factory.path(pod)
    backend.apply(pod_path, RedirectSpec())
    return pod_path, netns_factory.path(server)


@pytest.fixture
def sockets() -> Iterator[Callable[[str, Callable[[], socket.socket]], socket.socket]]:
    """Creates sockets inside a netns and closes every one of them at the end."""
    made: list[socket.socket] = []

    def make(netns_path: str, factory: Callable[[], socket.socket]) -> socket.socket:
        sock = run_in_netns(netns_path, factory)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def listener(ip: str, port: int) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(TIMEOUT_S)
        sock.bind((ip, port))
        sock.listen(8)
        return sock
    return make


def client(mark: int | None = None) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        sock = socket.socket()
        sock.settimeout(TIMEOUT_S)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        return sock
    return make


def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def test_outbound_goes_to_15001_with_the_original_destination(
    pair: tuple[str, str], sockets: Callable[..., socket.socket]
) -> None:
    pod, server = pair
    srv = sockets(server, listener(SERVER_IP, APP_PORT))
    proxy = sockets(pod, listener("0.0.0.0", OUTBOUND_PORT))
    app = sockets(pod, client())
    app.connect((SERVER_IP, APP_PORT))
    conn, _ = proxy.accept()
    with conn:
        assert original_dst(conn) == (SERVER_IP, APP_PORT)
        app.sendall(b"ping")
        assert conn.recv(4) == b"ping"
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):
        srv.accept()  # the server never saw the app's connection


def test_without_a_proxy_outbound_fails_closed_but_marked_sockets_pass(
    pair: tuple[str, str], sockets: Callable[..., socket.socket]
) -> None:
    pod, server = pair
    srv = sockets(server, listener(SERVER_IP, APP_PORT))
    app = sockets(pod, client())
    with pytest.raises(ConnectionRefusedError):
        app.connect((SERVER_IP, APP_PORT))
    proxy_upstream = sockets(pod, client(mark=PROXY_MARK))
    proxy_upstream.connect((SERVER_IP, APP_PORT))
    conn, peer = srv.accept()
    with conn:
        assert peer[0] == POD_IP
        proxy_upstream.sendall(b"direct")
        assert conn.recv(6) == b"direct"


def test_inbound_plaintext_goes_to_15006_but_hbone_port_is_not_redirected(
    pair: tuple[str, str], sockets: Callable[..., socket.socket]
) -> None:
    pod, server = pair
    inbound = sockets(pod, listener("0.0.0.0", INBOUND_PLAINTEXT_PORT))
    hbone = sockets(pod, listener("0.0.0.0", INBOUND_HBONE_PORT))
    peer = sockets(server, client())
    peer.connect((POD_IP, APP_PORT))
    conn, _ = inbound.accept()
    with conn:
        assert original_dst(conn) == (POD_IP, APP_PORT)
    peer2 = sockets(server, client())
    peer2.connect((POD_IP, INBOUND_HBONE_PORT))
    conn2, _ = hbone.accept()
    with conn2:
        assert conn2.getsockname() == (POD_IP, INBOUND_HBONE_PORT)
