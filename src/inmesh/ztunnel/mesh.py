"""What every pod proxy of a mesh-connected ztunnel shares: the workload table (xDS), the
certificates of the node's identities, the trust domain and the HBONE settings.

`Mesh` answers the proxies' questions (route of a destination, identity of a pod, TLS contexts
for an identity) and keeps the certificate manager's wanted set equal to the identities of the
pods served. TLS contexts are built once per certificate and rebuilt when it is renewed.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Set
from typing import Any, Protocol

from inmesh.errors import ConfigError
from inmesh.hbone import HboneSettings, client_context, server_context
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.addressing import Endpoint
from inmesh.ztunnel.routing import Route, pod_identity, route_outbound
from inmesh.ztunnel.workloads import WorkloadEntry, WorkloadTable

log = logging.getLogger(__name__)

__all__ = ["CertSource", "Mesh"]


class CertSource(Protocol):
    """What the mesh needs from the certificate manager (`CertManager`, or a fake)."""

    async def get(self, identity: SpiffeId) -> CertBundle: ...

    def set_wanted(self, identities: Set[SpiffeId]) -> None: ...

    def dump(self) -> list[dict[str, Any]]: ...


_Factory = Callable[[bytes, bytes, bytes], ssl.SSLContext]


class Mesh:
    """Shared mesh state of one ztunnel; see the module docstring."""

    def __init__(self, table: WorkloadTable, certs: CertSource, *, node: str,
                 trust_domain: str, hbone: HboneSettings | None = None) -> None:
        self.table = table
        self.certs = certs
        self.node = node
        self.trust_domain = trust_domain
        self.hbone = hbone or HboneSettings()
        self._contexts: dict[tuple[str, SpiffeId], tuple[CertBundle, ssl.SSLContext]] = {}
        self._debug: dict[str, Callable[[], dict[str, Any]]] = {}

    # -- decisions -------------------------------------------------------------------------

    def local(self, info: WorkloadInfo) -> WorkloadEntry | None:
        """The pod's own xDS workload, found by node, namespace and name (reference 6.4)."""
        return self.table.local(self.node, info.namespace, info.name)

    def identity_of(self, info: WorkloadInfo) -> SpiffeId:
        """The SPIFFE ID of a pod served here; `ConfigError` if its names cannot form one."""
        return pod_identity(info, self.local(info), self.trust_domain)

    def route(self, dst: Endpoint) -> Route:
        return route_outbound(self.table, dst)

    # -- certificates ----------------------------------------------------------------------

    def want(self, infos: Iterable[WorkloadInfo]) -> None:
        """Fetch (and keep renewing) the certificates of exactly these pods' identities."""
        wanted: set[SpiffeId] = set()
        for info in infos:
            try:
                wanted.add(self.identity_of(info))
            except ConfigError as exc:
                log.warning("pod %s/%s has no usable identity: %s", info.namespace, info.name,
                            exc)
        self.certs.set_wanted(wanted)
        live = {("client", i) for i in wanted} | {("server", i) for i in wanted}
        for key in self._contexts.keys() - live:
            del self._contexts[key]

    def forget(self, identity: SpiffeId) -> None:
        """Drop the TLS contexts (and with them the key) of ``identity``."""
        for role in ("client", "server"):
            self._contexts.pop((role, identity), None)

    async def client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        """TLS context presenting ``identity`` to HBONE servers; `CertUnavailable` if none."""
        return await self._context("client", identity, client_context)

    async def server_context(self, identity: SpiffeId) -> ssl.SSLContext:
        """TLS context of an HBONE listener whose server identity is ``identity``."""
        return await self._context("server", identity, server_context)

    async def _context(self, role: str, identity: SpiffeId, make: _Factory) -> ssl.SSLContext:
        bundle = await self.certs.get(identity)
        cached = self._contexts.get((role, identity))
        if cached is not None and cached[0] is bundle:
            return cached[1]
        ctx = make(bundle.cert_chain_pem, bundle.key_pem, bundle.roots_pem)
        self._contexts[(role, identity)] = (bundle, ctx)
        return ctx

    # -- observation -----------------------------------------------------------------------

    def register_debug(self, uid: str, dump: Callable[[], dict[str, Any]] | None) -> None:
        """Let pod ``uid`` show its HBONE state in the config dump (None: forget it)."""
        if dump is None:
            self._debug.pop(uid, None)
        else:
            self._debug[uid] = dump

    def pod_dump(self, uid: str, info: WorkloadInfo) -> dict[str, Any]:
        """The mesh part of a pod's ``workloadState`` entry: identity, certificate, HBONE pool."""
        try:
            identity: str | None = self.identity_of(info).uri
        except ConfigError:
            identity = None
        cert = next((c for c in self.certs.dump() if c["identity"] == identity), None)
        out: dict[str, Any] = {"identity": identity, "certificate": cert}
        if (dump := self._debug.get(uid)) is not None:
            out["hbone"] = dump()
        return out
