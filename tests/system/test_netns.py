"""The netns module: workers really run inside the namespace, and never leak the switch."""

from __future__ import annotations

import os
import socket

import pytest

from inmesh import netns
from inmesh.errors import KernelError
from tests.system.nshelpers import NetnsFactory


def test_worker_runs_callables_inside_the_namespace(netns_factory: NetnsFactory) -> None:
    name = netns_factory.create("a")
    path = netns_factory.path(name)
    worker = netns.NetnsWorker(path)
    try:
        assert worker.call(netns.current_netns_id) == netns.netns_id_of_path(path)
    finally:
        worker.close()
    # the calling thread never moved
    assert netns.current_netns_id() == netns.netns_id_of_path("/proc/self/ns/net")


def test_socket_created_by_worker_lives_in_the_namespace(netns_factory: NetnsFactory) -> None:
    name = netns_factory.create("b")
    netns_factory.exec(name, "ip", "addr", "add", "10.99.0.1/32", "dev", "lo")

    def bind() -> socket.socket:
        s = socket.socket()
        s.bind(("10.99.0.1", 0))
        return s

    sock = netns.run_in_netns(netns_factory.path(name), bind)
    try:
        assert sock.getsockname()[0] == "10.99.0.1"
    finally:
        sock.close()
    with socket.socket() as other, pytest.raises(OSError, match="assign"):
        other.bind(("10.99.0.1", 0))


def test_open_netns_refuses_a_file_that_is_not_a_namespace(tmp_path: os.PathLike[str]) -> None:
    f = os.path.join(os.fspath(tmp_path), "plain")
    open(f, "w").close()
    with pytest.raises(KernelError, match="not a network namespace"):
        netns.open_netns(f)
    with pytest.raises(KernelError, match="cannot open"):
        netns.open_netns(f + "-missing")


def test_netns_fd_detection(netns_factory: NetnsFactory) -> None:
    fd = netns.open_netns(netns_factory.path(netns_factory.create("c")))
    try:
        assert netns.is_netns_fd(fd)
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert not netns.is_netns_fd(r)
    finally:
        os.close(r)
        os.close(w)
