"""What a node's proxy reports about the mesh in /config_dump, read tolerantly: a pod's
certificate, the tunnel protocol the proxy knows a pod by, and its link to the control plane.

Pure. The certificate may be given per workload (``workloadState[uid].certificate``, with the
``identity`` next to it, as inmesh's ztunnel does) or in a list of certificates with an
``identity`` each (top level or under ``mesh``, as Istio's ztunnel does), or a map from
identity to entry. Whatever is missing becomes "unknown", never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNKNOWN = "unknown"
NONE = "-"
_STATE_KEYS = ("state", "status")
_EXPIRY_KEYS = ("not_after", "notAfter", "expiration_time", "expirationTime", "expires")


@dataclass(frozen=True)
class CertificateStatus:
    identity: str
    """The SPIFFE ID the pod runs as (the proxy's word if it gives one), "" outside the mesh."""
    state: str
    """The proxy's word (e.g. available, renewing), "-" if it holds none, or "unknown"."""
    not_after: str | None = None

    @classmethod
    def none(cls) -> CertificateStatus:
        """A pod outside the mesh: no identity, no certificate."""
        return cls("", NONE)

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "state": self.state, "notAfter": self.not_after}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _workload(uid: str, dump: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(_mapping(dump.get("workloadState")).get(uid))


def _from_list(identity: str, certs: Any) -> Mapping[str, Any] | None:
    if isinstance(certs, Mapping):
        entry = certs.get(identity)
        return entry if isinstance(entry, Mapping) else None
    if isinstance(certs, list):
        for entry in certs:
            if isinstance(entry, Mapping) and entry.get("identity") == identity:
                return entry
    return None


def _first(entry: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    return None


def _expiry(entry: Mapping[str, Any]) -> str | None:
    found = _first(entry, _EXPIRY_KEYS)
    chain = entry.get("cert_chain", entry.get("certChain"))
    if found is None and isinstance(chain, list) and chain and isinstance(chain[0], Mapping):
        found = _first(chain[0], _EXPIRY_KEYS)
    return found


def certificate_of(
    identity: str, uid: str, dump: Mapping[str, Any] | None
) -> CertificateStatus:
    """What the proxy says about the certificate of pod ``uid`` whose identity should be
    ``identity`` ("" for a pod outside the mesh)."""
    if not identity:
        return CertificateStatus.none()
    if dump is None:
        return CertificateStatus(identity, UNKNOWN)
    workload = _workload(uid, dump)
    said = workload.get("identity")
    identity = said if isinstance(said, str) and said else identity
    lists = [dump.get("certificates"), _mapping(dump.get("mesh")).get("certificates")]
    if "certificate" in workload:
        entry = workload["certificate"]
        entry = entry if isinstance(entry, Mapping) else None
    elif any(c is not None for c in lists):
        entry = next((e for c in lists if (e := _from_list(identity, c)) is not None), None)
    else:
        return CertificateStatus(identity, UNKNOWN)  # this proxy does not report certificates
    if entry is None:
        return CertificateStatus(identity, NONE)
    return CertificateStatus(identity, _first(entry, _STATE_KEYS) or UNKNOWN, _expiry(entry))


def tunnel_of(namespace: str, name: str, dump: Mapping[str, Any] | None) -> str:
    """The tunnel protocol (e.g. HBONE, NONE) the proxy's discovery table gives the pod, "-" if
    the table lacks it, "unknown" if the proxy shows no table."""
    table = _mapping(_mapping(dump).get("mesh")).get("workloads")
    workloads = _mapping(table).get("workloads")
    if not isinstance(workloads, list):
        return UNKNOWN
    for w in workloads:
        if isinstance(w, Mapping) and (w.get("namespace"), w.get("name")) == (namespace, name):
            return str(w.get("tunnelProtocol", UNKNOWN))
    return NONE


def xds_link_of(dump: Mapping[str, Any] | None) -> str:
    """The proxy's discovery stream: synced, connected, disconnected, "-" without a control
    plane, or "unknown" if the proxy did not answer."""
    if dump is None:
        return UNKNOWN
    mesh = dump.get("mesh")
    if not isinstance(mesh, Mapping):
        return NONE
    xds = _mapping(mesh.get("xds"))
    if xds.get("synced") is True:
        return "synced"
    return "connected" if xds.get("connected") is True else "disconnected"
