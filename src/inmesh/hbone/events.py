"""What an HBONE connection reports to its shell: small frozen facts, in the order they happened.

Emitted by `inmesh.hbone.protocol`; stream ids are HTTP/2 stream ids. After `ConnectionEnded`
the shell flushes what is left to send and closes the transport; every stream is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from inmesh.hbone.headers import ConnectHead


@dataclass(frozen=True)
class ConnectReceived:
    """Server: a valid CONNECT for this pod; answer it with `accept` or `refuse`."""

    stream_id: int
    head: ConnectHead


@dataclass(frozen=True)
class ConnectRefused:
    """Server: a CONNECT was refused (and answered with ``status``) without asking the shell."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True)
class ConnectAnswered:
    """Client: the server answered a CONNECT; 200 opens the tunnel, anything else closed it."""

    stream_id: int
    status: int


class DataArrived:
    """Tunnel bytes from the peer. Their flow-control credit is returned only once the shell
    calls ``acknowledge(stream_id, len(data))`` after delivering them. A view into the read
    buffer when the shell lent it (``receive(borrowed=True)``): valid until the next read.

    One is made per received chunk, so it is a plain slotted class: a frozen dataclass's
    ``__init__`` (``object.__setattr__`` per field) cost three times as much. Treat it as
    frozen all the same."""

    __slots__ = ("data", "stream_id")

    def __init__(self, stream_id: int, data: bytes | memoryview) -> None:
        self.stream_id = stream_id
        self.data = data

    def __eq__(self, other: object) -> bool:
        if type(other) is not DataArrived:
            return NotImplemented
        return self.stream_id == other.stream_id and self.data == other.data

    __hash__ = None  # type: ignore[assignment]  # like a dataclass with eq: not hashable

    def __repr__(self) -> str:
        return f"DataArrived(stream_id={self.stream_id}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class PeerEnded:
    """The peer half-closed the stream (END_STREAM): no more data will arrive on it."""

    stream_id: int


@dataclass(frozen=True)
class StreamReset:
    """The stream ended abnormally (RST_STREAM); its undelivered data is void."""

    stream_id: int
    error_code: int
    by_peer: bool
    """True: the peer sent RST_STREAM. False: we reset it for a protocol violation."""


@dataclass(frozen=True)
class WindowGrew:
    """Send credit grew on ``stream_id``, or on every stream if None; blocked writers retry."""

    stream_id: int | None


@dataclass(frozen=True)
class ConnectionEnded:
    """The connection is over: GOAWAY from the peer, a protocol error, no PONG, or idle."""

    reason: str
    error_code: int
    by_peer: bool


Event = (ConnectReceived | ConnectRefused | ConnectAnswered | DataArrived | PeerEnded
         | StreamReset | WindowGrew | ConnectionEnded)
