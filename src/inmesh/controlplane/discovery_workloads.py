"""Istio `Workload` resources built from the cluster's pods, the way istiod builds them.

Pure: a `ClusterView` in, Address resources out. Every pod with an IP that is not terminal and
not on the host network becomes a workload (mesh or not, as in Istio); its `tunnel_protocol` is
HBONE only once the node agent has annotated it `ambient.istio.io/redirection=enabled`, i.e.
once its traffic is redirected and its proxy listens on 15008 (reference 1.1, 1.2 step 7).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator

from inmesh.cluster.model import ClusterView, PodMeta
from inmesh.constants import ANNOTATION_REDIRECTION
from inmesh.identity import DEFAULT_TRUST_DOMAIN
from inmesh.xds.proto import workload_pb2
from inmesh.xds.resources import Resource, Snapshot, address_resource

__all__ = [
    "DEFAULT_CLUSTER_ID",
    "build_snapshot",
    "pod_workload",
    "workload_resources",
    "workload_uid",
]

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_ID = "Kubernetes"
"""Istio's default cluster id (`ISTIO_META_CLUSTER_ID`); it prefixes every workload uid."""

REDIRECTION_ENABLED = "enabled"

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = (
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
)


def workload_uid(cluster_id: str, namespace: str, name: str) -> str:
    """istiod's uid of a pod workload (reference 6.4); also its xDS resource name."""
    return f"{cluster_id}//Pod/{namespace}/{name}"


def _first_label(pod: PodMeta, keys: tuple[str, ...], default: str) -> str:
    return next((pod.labels[k] for k in keys if pod.labels.get(k)), default)


def _packed(pod: PodMeta) -> list[bytes]:
    """The pod's IPs as 4 or 16 bytes; IPv4-mapped IPv6 as IPv4. Raises ValueError."""
    out: list[bytes] = []
    for text in pod.ips:
        ip = ipaddress.ip_address(text)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.packed not in out:
            out.append(ip.packed)
    return out


def pod_workload(pod: PodMeta, trust_domain: str, cluster_id: str) -> workload_pb2.Workload | None:
    """The Workload of `pod`, or None if it is not one (terminal, host network, no valid IP)."""
    if pod.terminal or pod.host_network or not pod.ips:
        return None
    try:
        addresses = _packed(pod)
    except ValueError as exc:
        log.warning("pod %s/%s left out of xDS: bad IP: %s", pod.namespace, pod.name, exc)
        return None
    hbone = pod.annotations.get(ANNOTATION_REDIRECTION) == REDIRECTION_ENABLED
    return workload_pb2.Workload(
        uid=workload_uid(cluster_id, pod.namespace, pod.name),
        name=pod.name,
        namespace=pod.namespace,
        addresses=addresses,
        tunnel_protocol=workload_pb2.HBONE if hbone else workload_pb2.NONE,
        # istiod elides the default trust domain; the proxy reads empty as cluster.local.
        trust_domain="" if trust_domain == DEFAULT_TRUST_DOMAIN else trust_domain,
        service_account=pod.service_account,
        node=pod.node,
        canonical_name=_first_label(pod, _CANONICAL_NAME_LABELS, pod.name),
        canonical_revision=_first_label(pod, _CANONICAL_REVISION_LABELS, "latest"),
        workload_type=workload_pb2.POD,
        workload_name=pod.name,
        status=workload_pb2.HEALTHY if pod.phase == "Running" else workload_pb2.UNHEALTHY,
        cluster_id=cluster_id,
    )


def workload_resources(view: ClusterView, trust_domain: str, cluster_id: str) -> Iterator[Resource]:
    """One Address resource per pod workload in `view`, named by uid."""
    for pod in view.pods.values():
        workload = pod_workload(pod, trust_domain or DEFAULT_TRUST_DOMAIN, cluster_id)
        if workload is not None:
            yield address_resource(workload.uid, workload_pb2.Address(workload=workload))


def build_snapshot(
    view: ClusterView, trust_domain: str, cluster_id: str, generation: int
) -> Snapshot:
    return Snapshot.of(generation, workload_resources(view, trust_domain, cluster_id))
