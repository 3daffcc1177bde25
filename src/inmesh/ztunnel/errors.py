"""Errors of the proxy's identity layer, importable by sans-io modules (no grpc, no asyncio)."""

from __future__ import annotations

from inmesh.errors import InmeshError


class CaFetchError(InmeshError):
    """The CA could not be reached, refused the request, or answered with an unusable chain."""


class CertUnavailable(InmeshError):
    """No valid certificate for an identity (yet); the message carries the last fetch error."""
