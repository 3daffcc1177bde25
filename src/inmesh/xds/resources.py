"""xDS resources as values: a named, versioned, serialized message, and snapshots of them.

A resource's version is a hash of its deterministic serialization, so it is the same on every
control plane that builds the same content; a proxy reconnecting with `initial_resource_versions`
after a control-plane restart then gets only what really changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from inmesh.xds.proto import workload_pb2

ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"
"""Istio's workload discovery type (reference 6.5): workloads and services by name."""

AUTHORIZATION_TYPE_URL = "type.googleapis.com/istio.security.Authorization"
"""Istio's policy type. ztunnel subscribes to it too; inmesh serves it empty (no policies)."""

_VERSION_HEX_DIGITS = 16
"""64 bits of SHA-256: collisions between two versions of one resource are not a concern."""


@dataclass(frozen=True)
class Resource:
    """One resource of a type: its xDS name, version and serialized message (the Any value)."""

    name: str
    version: str
    body: bytes = field(repr=False)


def content_version(body: bytes) -> str:
    """The version of a resource whose serialization is `body`."""
    return hashlib.sha256(body).hexdigest()[:_VERSION_HEX_DIGITS]


def address_resource(name: str, address: workload_pb2.Address) -> Resource:
    """Wrap an `Address` as a resource, versioned by content."""
    body = address.SerializeToString(deterministic=True)
    return Resource(name, content_version(body), body)


@dataclass(frozen=True)
class Snapshot:
    """The complete set of resources of one type at one moment, by name.

    `generation` increases by one with every change; a source hands out a new Snapshot rather
    than mutating one, so streams can hold on to it without copying.
    """

    generation: int = 0
    resources: Mapping[str, Resource] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, generation: int, resources: Iterable[Resource]) -> Snapshot:
        return cls(generation, MappingProxyType({r.name: r for r in resources}))

    def versions(self) -> dict[str, str]:
        return {name: r.version for name, r in self.resources.items()}
