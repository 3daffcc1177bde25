"""Socket chores shared by the HBONE shells: connect if needed, and close with a reset."""

from __future__ import annotations

import contextlib
import socket
import struct

from inmesh.hbone.headers import Target
from inmesh.sockio import connect

_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_close(sock: socket.socket) -> None:
    """Close ``sock`` so the peer sees a reset (RST) rather than an orderly FIN."""
    with contextlib.suppress(OSError):  # already dead: close() is all that is left to do
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def release(sock: socket.socket) -> None:
    """Let go of ``sock`` after a failed ``create_connection(sock=)`` or
    ``connect_accepted_socket``. uvloop attaches the socket to its transport (``_io_refs``
    raised) and closes the fd itself when the TLS handshake fails, without detaching the socket
    object; ``close()`` would then leave the stale fd number to the object's finalizer, which
    could close an unrelated socket that reused it. Detach in that case, close otherwise."""
    if getattr(sock, "_io_refs", 0) > 0:
        sock.detach()
    else:
        sock.close()


async def ensure_connected(sock: socket.socket, target: Target) -> None:
    """Connect ``sock`` to ``target`` unless it is connected already (non-blocking after).
    Callers bound the wait with ``asyncio.timeout``."""
    await connect(sock, (target.ip, target.port))
