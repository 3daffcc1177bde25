"""The node proxy's table of mesh workloads, fed by delta xDS `istio.workload.Address` resources.

The proxy asks it "is this destination a mesh workload that takes HBONE?" (`hbone_capable`,
`by_ip`), "which workload am I serving?" (`local`) and "what identity does it have?"
(`identity_of`). Sans-io: updates are applied atomically, all or nothing, and a resource that
cannot be used raises `RemoteProtocolError` (the xDS client then NACKs the whole response).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from inmesh.errors import ConfigError, RemoteProtocolError
from inmesh.identity import SpiffeId
from inmesh.xds.proto import workload_pb2
from inmesh.ztunnel.addressing import canonical_ip

__all__ = ["TunnelProtocol", "WorkloadEntry", "WorkloadTable", "decode_workload"]


class TunnelProtocol(enum.Enum):
    """How peers reach a workload (Istio's `TunnelProtocol`, same numbers)."""

    NONE = 0
    """Plain TCP: not in the mesh (or not redirected yet); traffic to it is passed through."""
    HBONE = 1
    """mTLS + HTTP/2 CONNECT to port 15008."""
    LEGACY_ISTIO_MTLS = 2
    """Istio's sidecar mTLS; inmesh does not speak it, so it is treated like NONE."""


_WORKLOAD_TYPES = {v: k.lower() for k, v in workload_pb2.WorkloadType.items()}


@dataclass(frozen=True)
class WorkloadEntry:
    """One workload as the proxy sees it (from an Istio `Workload`)."""

    uid: str
    name: str
    namespace: str
    service_account: str
    node: str
    ips: tuple[str, ...]
    """Canonical text form, IPv4-mapped IPv6 turned into IPv4."""
    trust_domain: str = ""
    """Empty means the mesh default (cluster.local)."""
    tunnel_protocol: TunnelProtocol = TunnelProtocol.NONE
    healthy: bool = True
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: str = "deployment"
    """Lower-case Istio workload type (deployment, cronjob, pod, job), as HBONE baggage uses it."""
    workload_name: str = ""
    cluster_id: str = ""
    network: str = ""
    hostname: str = ""

    @property
    def hbone(self) -> bool:
        return self.tunnel_protocol is TunnelProtocol.HBONE

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId.for_workload(self.namespace, self.service_account, self.trust_domain)

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "node": self.node,
            "ips": list(self.ips),
            "trustDomain": self.trust_domain,
            "tunnelProtocol": self.tunnel_protocol.name,
            "healthy": self.healthy,
            "canonicalName": self.canonical_name,
            "canonicalRevision": self.canonical_revision,
            "workloadType": self.workload_type,
            "workloadName": self.workload_name,
            "clusterId": self.cluster_id,
            "network": self.network,
            "hostname": self.hostname,
            "identity": self.identity.uri,
        }


def _ip_text(packed: bytes, resource: str) -> str:
    if len(packed) not in (4, 16):
        raise RemoteProtocolError(
            f"workload {resource!r} has a {len(packed)}-byte address (must be 4 or 16)"
        )
    return canonical_ip(str(ipaddress.ip_address(packed)))


def decode_workload(resource: str, w: workload_pb2.Workload) -> WorkloadEntry:
    """Turn the xDS `Workload` named `resource` into an entry; raises RemoteProtocolError."""
    ips = tuple(dict.fromkeys(_ip_text(a, resource) for a in w.addresses))
    try:
        protocol = TunnelProtocol(w.tunnel_protocol)
    except ValueError:
        protocol = TunnelProtocol.NONE  # a newer tunnel we cannot speak: pass through
    entry = WorkloadEntry(
        uid=w.uid or resource,
        name=w.name,
        namespace=w.namespace,
        service_account=w.service_account or "default",
        node=w.node,
        ips=ips,
        trust_domain=w.trust_domain,
        tunnel_protocol=protocol,
        healthy=w.status == workload_pb2.HEALTHY,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=_WORKLOAD_TYPES.get(w.workload_type, "deployment"),
        workload_name=w.workload_name,
        cluster_id=w.cluster_id,
        network=w.network,
        hostname=w.hostname,
    )
    try:
        entry.identity  # noqa: B018 (validates namespace, service account, trust domain)
    except ConfigError as exc:
        raise RemoteProtocolError(f"workload {resource!r} has no valid identity: {exc}") from exc
    return entry


def _decode(resource: str, body: bytes) -> WorkloadEntry | None:
    """A workload entry, or None for a Service (accepted, not used yet)."""
    address = workload_pb2.Address()
    try:
        address.ParseFromString(body)
    except DecodeError as exc:
        raise RemoteProtocolError(f"Address {resource!r} does not decode: {exc}") from exc
    kind = address.WhichOneof("type")
    if kind == "workload":
        return decode_workload(resource, address.workload)
    if kind == "service":
        return None
    raise RemoteProtocolError(f"Address {resource!r} is neither a workload nor a service")


def _pod_key(entry: WorkloadEntry) -> tuple[str, str, str]:
    return (entry.node, entry.namespace, entry.name)


def _unindex(index: dict[Any, set[str]], key: object, name: str) -> None:
    names = index[key]
    names.discard(name)
    if not names:
        del index[key]


class WorkloadTable:
    """The mesh workloads known from xDS, by resource name, by IP and by (node, ns, name)."""

    def __init__(self) -> None:
        self._workloads: dict[str, WorkloadEntry] = {}
        self._services: set[str] = set()
        self._by_ip: dict[str, set[str]] = {}
        self._by_pod: dict[tuple[str, str, str], set[str]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._raw: dict[str, bytes] = {}
        self._appliers: list[Callable[[Mapping[str, bytes], Collection[str]], None]] = []
        self.generation = 0
        """Incremented by every applied update."""

    def __len__(self) -> int:
        return len(self._workloads)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (synchronously, no arguments) after every applied update."""
        self._listeners.append(callback)

    def add_apply_listener(
            self, callback: Callable[[Mapping[str, bytes], Collection[str]], None]) -> None:
        """Call ``callback(added, removed)`` with every update applied (to mirror the table
        elsewhere: see `resources`)."""
        self._appliers.append(callback)

    def resources(self) -> dict[str, bytes]:
        """Every resource applied so far, serialized as received: applying them to an empty
        table gives this table."""
        return dict(self._raw)

    def apply(self, added: Mapping[str, bytes], removed: Collection[str]) -> None:
        """Apply one xDS response: `added` maps resource names to serialized `Address`es.

        All or nothing: if any resource is unusable, RemoteProtocolError names it and the
        table is unchanged."""
        decoded = {name: _decode(name, body) for name, body in added.items()}
        for name in (*removed, *decoded):
            self._forget(name)
        for name, entry in decoded.items():
            if entry is None:
                self._services.add(name)
                continue
            self._workloads[name] = entry
            for ip in entry.ips:
                self._by_ip.setdefault(ip, set()).add(name)
            self._by_pod.setdefault(_pod_key(entry), set()).add(name)
        for name in removed:
            self._raw.pop(name, None)
        self._raw.update(added)
        self.generation += 1
        for applier in self._appliers:
            applier(added, removed)
        for callback in self._listeners:
            callback()

    def _forget(self, name: str) -> None:
        self._services.discard(name)
        entry = self._workloads.pop(name, None)
        if entry is None:
            return
        for ip in entry.ips:
            _unindex(self._by_ip, ip, name)
        _unindex(self._by_pod, _pod_key(entry), name)

    def _pick(self, names: set[str] | None) -> WorkloadEntry | None:
        """One of several records for the same IP or pod (a pod replaced faster than its old
        record went): a healthy one first, then the lowest uid."""
        if not names:
            return None
        return min((self._workloads[n] for n in names), key=lambda e: (not e.healthy, e.uid))

    def by_name(self, name: str) -> WorkloadEntry | None:
        return self._workloads.get(name)

    def by_ip(self, ip: str) -> WorkloadEntry | None:
        """The workload that has `ip` (any text form), or None, also for a non-IP string."""
        try:
            return self._pick(self._by_ip.get(canonical_ip(ip)))
        except ValueError:
            return None

    def local(self, node: str, namespace: str, name: str) -> WorkloadEntry | None:
        """The workload `namespace`/`name` if it runs on `node` (how a proxy finds itself)."""
        return self._pick(self._by_pod.get((node, namespace, name)))

    def hbone_capable(self, ip: str) -> bool:
        """Whether traffic to `ip` goes through HBONE (a known workload with HBONE) or is
        passed through as plain TCP."""
        entry = self.by_ip(ip)
        return entry is not None and entry.hbone

    @staticmethod
    def identity_of(entry: WorkloadEntry) -> SpiffeId:
        """SPIFFE identity of `entry`; an empty trust domain is cluster.local (reference 6.4)."""
        return entry.identity

    def dump(self) -> dict[str, Any]:
        """JSON-ready contents, sorted, for the admin endpoint and debugging."""
        return {
            "generation": self.generation,
            "workloads": [self._workloads[n].to_json() for n in sorted(self._workloads)],
            "services": sorted(self._services),
        }
