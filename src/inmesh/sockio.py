"""Asynchronous socket chores the event loop does more slowly than needed.

`connect`: uvloop's ``sock_connect`` resolves every address, numeric ones included, with
``getaddrinfo`` in its thread pool (a thread hand-off and several futex calls per connection);
a proxy connects only to addresses it already has as IP literals, so it connects directly.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

_PENDING = (errno.EINPROGRESS, errno.EALREADY)


async def connect(sock: socket.socket, address: tuple[str, int]) -> None:
    """Connect the IP socket ``sock`` (made non-blocking) to ``address`` (an IP literal and a
    port); `OSError` as ``connect`` would raise it. A socket already connected to it is left
    as it is. Callers bound the wait (``asyncio.timeout``); a cancelled connect leaves the
    socket to its owner, who closes it."""
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code in (0, errno.EISCONN):
        return
    if code not in _PENDING:
        raise OSError(code, f"connect to {address[0]}:{address[1]}: {os.strerror(code)}")
    loop = asyncio.get_running_loop()
    writable: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _done, writable)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, f"connect to {address[0]}:{address[1]}: {os.strerror(code)}")


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
