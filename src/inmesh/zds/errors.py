"""Errors of the agent's ZDS API: no ztunnel to talk to, ztunnel said no, ztunnel too slow."""

from __future__ import annotations

from inmesh.errors import InmeshError, RemoteProtocolError


class ZdsNotConnected(InmeshError):
    """No ztunnel connection to send to, or it closed before the request was acknowledged."""


class ZdsNacked(RemoteProtocolError):
    """ztunnel answered with a NACK; `text` is its error text."""

    def __init__(self, text: str, request: object = None) -> None:
        super().__init__(f"ztunnel NACKed {request!r}: {text}" if request is not None else text)
        self.text = text


class ZdsTimeout(InmeshError):
    """ztunnel did not take or acknowledge a request in time (the connection is then closed)."""
