"""The error vocabulary of inmesh: whose fault it is, and what goes on the wire.

Every error carries a human message that names the pod or namespace involved. Subclasses say who
is at fault (our config, the remote peer, the kernel, ourselves); the wire mapping (CNI error
code, ZDS NACK text, HTTP status) is decided by the layer that speaks that protocol.
"""

from __future__ import annotations


class InmeshError(Exception):
    """Base class of all inmesh errors."""


class ConfigError(InmeshError):
    """A setting, file or argument supplied by the operator is invalid."""


class RemoteProtocolError(InmeshError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(InmeshError):
    """We were asked to do something the protocol does not allow (a bug on our side)."""


class KernelError(InmeshError):
    """A syscall or kernel-facing command failed."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class NotFoundError(InmeshError):
    """A pod, namespace or netns that was asked for does not exist (yet)."""
