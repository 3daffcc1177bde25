"""Socket chores shared by the HBONE shells: connect if needed, and close with a reset."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct

from inmesh.hbone.headers import Target

_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_close(sock: socket.socket) -> None:
    """Close ``sock`` so the peer sees a reset (RST) rather than an orderly FIN."""
    with contextlib.suppress(OSError):  # already dead: close() is all that is left to do
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return False
        raise
    return True


async def ensure_connected(sock: socket.socket, target: Target) -> None:
    """Connect ``sock`` to ``target`` unless it is connected already (non-blocking after).
    Callers bound the wait with ``asyncio.timeout``."""
    sock.setblocking(False)
    if not is_connected(sock):
        await asyncio.get_running_loop().sock_connect(sock, (target.ip, target.port))
