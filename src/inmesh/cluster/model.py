"""What inmesh knows of a cluster: pods, namespaces, and the pluggable source of that knowledge.

A `PodSource` hands out immutable `ClusterView`s. The lab's source is a JSON file
(`inmesh.cluster.store.FileClusterStore`); a Kubernetes informer-backed source would implement
the same protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from inmesh.errors import ConfigError


@dataclass(frozen=True)
class NamespaceMeta:
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class PodMeta:
    """What the agent needs to know about one pod (the fields of a Kubernetes Pod it reads)."""

    uid: str
    name: str
    namespace: str
    node: str
    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    host_network: bool = False
    ips: tuple[str, ...] = ()
    netns: str | None = None
    """The netns path the runtime gave the pod, if the source knows it."""
    phase: str = "Running"

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "namespace": self.namespace,
            "node": self.node,
            "serviceAccount": self.service_account,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "hostNetwork": self.host_network,
            "ips": list(self.ips),
            "netns": self.netns,
            "phase": self.phase,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PodMeta:
        try:
            return cls(
                uid=str(obj["uid"]),
                name=str(obj["name"]),
                namespace=str(obj["namespace"]),
                node=str(obj["node"]),
                service_account=str(obj.get("serviceAccount") or "default"),
                labels=MappingProxyType({str(k): str(v) for k, v in obj.get("labels", {}).items()}),
                annotations=MappingProxyType(
                    {str(k): str(v) for k, v in obj.get("annotations", {}).items()}
                ),
                host_network=bool(obj.get("hostNetwork", False)),
                ips=tuple(str(ip) for ip in obj.get("ips", ())),
                netns=obj.get("netns") or None,
                phase=str(obj.get("phase", "Running")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"malformed pod record {obj!r}: {exc}") from exc


@dataclass(frozen=True)
class ClusterView:
    """An immutable view of the cluster's pods (by uid) and namespaces (by name)."""

    pods: Mapping[str, PodMeta] = field(default_factory=lambda: MappingProxyType({}))
    namespaces: Mapping[str, NamespaceMeta] = field(default_factory=lambda: MappingProxyType({}))
    revision: int = 0

    def pod_by_name(self, namespace: str, name: str) -> PodMeta | None:
        for pod in self.pods.values():
            if pod.namespace == namespace and pod.name == name:
                return pod
        return None

    def pods_on_node(self, node: str) -> list[PodMeta]:
        return [p for p in self.pods.values() if p.node == node]

    def namespace(self, name: str) -> NamespaceMeta:
        return self.namespaces.get(name) or NamespaceMeta(name)


class PodSource(Protocol):
    """The seam between the agent and its source of truth about pods."""

    def view(self) -> ClusterView:
        """The latest view; cheap to call repeatedly (implementations cache)."""
        ...

    def annotate(self, uid: str, key: str, value: str | None) -> None:
        """Set (None: remove) an annotation on pod ``uid``, as the agent patches a pod's status.

        A no-op if the pod is gone."""
        ...


