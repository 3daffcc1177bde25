"""Seqpacket records with fds: what arrives, truncation flags, EOF, stray fds, write bounds."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket

import pytest

from inmesh.netns import netns_id_of_fd
from inmesh.zds import _seqpacket
from inmesh.zds.messages import MAX_RECORD

from .helpers import netns_fd, open_fds, own_netns, run, seqpacket_pair


def test_record_with_fd_arrives_whole_and_close_on_exec() -> None:
    a, b = seqpacket_pair()
    with a, b, netns_fd() as fd:
        socket.send_fds(a, [b"\x1a\x00"], [fd])
        record = _seqpacket.try_recv(b)
        assert record is not None
        assert record.data == b"\x1a\x00"
        assert len(record.fds) == 1
        assert not record.truncated
        assert not record.eof
        assert netns_id_of_fd(record.fds[0]) == own_netns()
        assert fcntl.fcntl(record.fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        _seqpacket.close_fds(record.fds)


def test_nothing_to_read_is_none_and_peer_close_is_eof() -> None:
    a, b = seqpacket_pair()
    with b:
        assert _seqpacket.try_recv(b) is None
        a.close()
        record = _seqpacket.try_recv(b)
        assert record is not None
        assert record.eof


def test_oversized_record_is_flagged_truncated() -> None:
    a, b = seqpacket_pair()
    with a, b:
        a.send(b"\x0a" * (MAX_RECORD + 1))
        record = _seqpacket.try_recv(b)
        assert record is not None
        assert record.truncated
        assert len(record.data) == MAX_RECORD


def test_more_fds_than_the_space_are_flagged_and_none_leak() -> None:
    before = open_fds()
    a, b = seqpacket_pair()
    with a, b, netns_fd() as fd:
        socket.send_fds(a, [b"x"], [fd] * (_seqpacket.MAX_FDS_RECEIVED + 3))
        record = _seqpacket.try_recv(b)
        assert record is not None
        assert record.truncated
        assert len(record.fds) <= _seqpacket.MAX_FDS_RECEIVED
        _seqpacket.close_fds(record.fds)
    assert open_fds() <= before


def test_records_keep_their_boundaries() -> None:
    async def body() -> list[bytes]:
        a, b = seqpacket_pair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            for data in (b"\x08\x01", b"\x0a\x00", b"\x0a\x03\x0a\x01x"):
                await _seqpacket.send_record(a, data)
            return [(await _seqpacket.recv_record(b)).data for _ in range(3)]

    assert run(body()) == [b"\x08\x01", b"\x0a\x00", b"\x0a\x03\x0a\x01x"]


def test_send_to_a_peer_that_does_not_read_is_bounded_by_a_timeout() -> None:
    async def body() -> int:
        a, b = seqpacket_pair()
        with a, b:
            a.setblocking(False)
            sent = 0
            with pytest.raises(TimeoutError):  # noqa: PT012 (fill the queue, then block)
                async with asyncio.timeout(0.2):
                    while True:
                        await _seqpacket.send_record(a, b"\x00" * MAX_RECORD)
                        sent += 1
            return sent

    assert run(body()) > 0


def test_send_to_a_closed_peer_raises_broken_pipe() -> None:
    async def body() -> None:
        a, b = seqpacket_pair()
        b.close()
        with a:
            a.setblocking(False)
            with pytest.raises(BrokenPipeError):
                await _seqpacket.send_record(a, b"\x1a\x00")

    run(body())


def test_new_socket_is_nonblocking_seqpacket() -> None:
    with _seqpacket.new_socket() as sock:
        assert sock.type == socket.SOCK_SEQPACKET
        assert sock.getblocking() is False
        assert not os.get_inheritable(sock.fileno())
