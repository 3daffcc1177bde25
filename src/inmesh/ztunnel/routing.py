"""Pure mesh decisions of the proxy: where an outbound connection goes, which identity a pod has,
what its HBONE baggage says, and which response flag a tunnel failure is reported with.

Sans-io: a `WorkloadTable` (xDS) and ZDS `WorkloadInfo` in, values out. Reference istio-inpod.md
6.3 (routes), 6.4 (identity of a pod), 7 (CONNECT headers), 9.1 (response flags).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from inmesh.constants import INBOUND_HBONE_PORT
from inmesh.errors import ConfigError
from inmesh.hbone.errors import (
    ConnectRejected,
    HboneConnectionError,
    PeerIdentityError,
)
from inmesh.hbone.headers import Header, PeerMetadata, Target
from inmesh.identity import SpiffeId
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.addressing import Endpoint
from inmesh.ztunnel.errors import CaFetchError, CertUnavailable
from inmesh.ztunnel.workloads import WorkloadEntry, WorkloadTable

__all__ = [
    "HboneRoute",
    "Passthrough",
    "Route",
    "failure_flag",
    "pod_identity",
    "route_outbound",
    "source_baggage",
]


@dataclass(frozen=True)
class Passthrough:
    """Plain TCP to the original destination (not a mesh workload, or one without HBONE)."""

    destination: WorkloadEntry | None = None
    """The xDS workload at the destination IP, if any (for metrics labels)."""


@dataclass(frozen=True)
class HboneRoute:
    """mTLS + HTTP/2 CONNECT to the destination pod's HBONE port."""

    destination: WorkloadEntry
    identity: SpiffeId
    """The only SPIFFE ID the server may present."""
    address: Target
    """Where the TLS connection goes: ``<pod IP>:15008``."""
    authority: Target
    """The CONNECT ``:authority``: the app's original ``<pod IP>:<port>``."""


Route = Passthrough | HboneRoute


def route_outbound(table: WorkloadTable, dst: Endpoint,
                   hbone_port: int = INBOUND_HBONE_PORT) -> Route:
    """HBONE to a workload whose tunnel protocol is HBONE, passthrough otherwise (reference 6.3;
    services and waypoints are not modelled yet)."""
    entry = table.by_ip(dst.ip)
    if entry is None or not entry.hbone:
        return Passthrough(entry)
    return HboneRoute(entry, table.identity_of(entry), Target(dst.ip, hbone_port),
                      Target(dst.ip, dst.port))


def pod_identity(info: WorkloadInfo, local: WorkloadEntry | None,
                 default_trust_domain: str) -> SpiffeId:
    """The SPIFFE ID a pod's proxy presents: namespace and service account from ZDS, trust
    domain from the pod's own xDS workload (``local``) or else the mesh default (reference 6.4).
    `ConfigError` if the names cannot form an identity."""
    trust_domain = (local.trust_domain if local is not None else "") or default_trust_domain
    return SpiffeId.for_workload(info.namespace, info.service_account, trust_domain)


def source_baggage(info: WorkloadInfo, local: WorkloadEntry | None) -> Header:
    """The CONNECT ``baggage`` describing the source pod; from xDS when the pod is known there,
    else only what ZDS says (namespace and pod name)."""
    if local is None:
        return PeerMetadata(namespace=info.namespace, workload_type="pod",
                            workload_name=info.name).baggage()
    return PeerMetadata(
        cluster=local.cluster_id,
        namespace=local.namespace,
        workload_type=local.workload_type,
        workload_name=local.workload_name or local.name,
        service=local.canonical_name,
        version=local.canonical_revision,
    ).baggage()


def failure_flag(exc: BaseException) -> str:
    """Istio's ``response_flags`` value for a tunnel that could not be opened."""
    if isinstance(exc, ConnectRejected):
        return "DENY" if exc.status in (401, 403) else "CONNECT"
    if isinstance(exc, PeerIdentityError):
        return "TLS_FAILURE"
    if isinstance(exc, HboneConnectionError) and isinstance(exc.__cause__, ssl.SSLError):
        return "TLS_FAILURE"
    if isinstance(exc, CertUnavailable | CaFetchError | ConfigError):
        return "IDENTITY_ERROR"  # we have no (valid) certificate for the source pod
    return "CONNECT"  # TCP to 15008 failed, the connection broke, or the stream was reset
