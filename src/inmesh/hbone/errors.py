"""HBONE's errors: who broke the tunnel, and the HTTP status or HTTP/2 code on the wire."""

from __future__ import annotations

from inmesh.errors import InmeshError, RemoteProtocolError


class PeerIdentityError(RemoteProtocolError):
    """The peer's certificate chained to our roots but names the wrong (or no) SPIFFE identity."""


class HboneConnectionError(RemoteProtocolError):
    """The HBONE connection could not be set up or broke (TCP, TLS, HTTP/2 or keepalive)."""


class ConnectRejected(RemoteProtocolError):
    """The server answered our CONNECT with a non-200 status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StreamResetError(RemoteProtocolError):
    """The stream was reset (by the peer, by us, or because its connection died)."""

    def __init__(self, message: str, error_code: int, by_peer: bool) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.by_peer = by_peer


class UpstreamRefused(InmeshError):
    """Raised by a server's ``open_upstream`` to answer a CONNECT with ``status`` instead of
    200: 503 when the destination cannot be reached (the default), 401 when policy denies."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status
