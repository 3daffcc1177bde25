"""Records with file descriptors over a non-blocking AF_UNIX SOCK_SEQPACKET socket, for asyncio.

One record = one ZDS message (at most `MAX_RECORD` bytes) plus optional SCM_RIGHTS fds. Received
fds are close-on-exec and belong to the caller, also when the record is flagged as truncated.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from inmesh.zds.messages import MAX_RECORD

MAX_FDS_RECEIVED = 8
"""Ancillary space, in fds, for one received record. ZDS allows at most one; room for a few more
lets us receive and close stray fds instead of relying on MSG_CTRUNC (the kernel drops fds that
do not fit, and flags the record as truncated)."""

_FD_SIZE = array.array("i").itemsize
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS_RECEIVED * _FD_SIZE)


@dataclass(frozen=True)
class Record:
    """One received seqpacket record. `eof` means the peer has closed the connection."""

    data: bytes
    fds: tuple[int, ...] = ()
    truncated: bool = False
    eof: bool = False


def new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


def try_recv(sock: socket.socket) -> Record | None:
    """Receive one record without blocking; None if there is none yet."""
    try:
        data, ancdata, flags, _ = sock.recvmsg(
            MAX_RECORD, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
        )
    except (BlockingIOError, InterruptedError):
        return None
    except (ConnectionResetError, BrokenPipeError):
        return Record(b"", eof=True)
    fds = _fds_of(ancdata)
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
    # A zero-length record is indistinguishable from EOF on SOCK_SEQPACKET; no ZDS message that
    # a peer sends to its counterpart encodes to zero bytes except Hello(NOT_USED), so we accept it.
    eof = not data and not fds and not truncated
    return Record(data, fds, truncated, eof)


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


async def recv_record(sock: socket.socket) -> Record:
    """Wait for and receive the next record."""
    while (record := try_recv(sock)) is None:
        await _wait_ready(sock, writable=False)
    return record


async def send_record(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send one record (with `fds` as SCM_RIGHTS), waiting for room as long as it takes (bound it
    with `asyncio.timeout`). Raises OSError (BrokenPipeError, ...) if the peer is gone."""
    while True:
        try:
            _send_now(sock, data, fds)
            return
        except (BlockingIOError, InterruptedError):
            await _wait_ready(sock, writable=True)


def _send_now(sock: socket.socket, data: bytes, fds: Sequence[int]) -> None:
    ancdata = []
    if fds:
        ancdata.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
    sent = sock.sendmsg([data], ancdata, socket.MSG_NOSIGNAL)
    if sent != len(data):  # cannot happen on SOCK_SEQPACKET: records are atomic
        raise BrokenPipeError(f"short seqpacket send: {sent} of {len(data)} bytes")


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, ...]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
            fds.extend(arr)
    return tuple(fds)


async def _wait_ready(sock: socket.socket, *, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
