"""Where the agent learns about pods and namespaces: the model and the pluggable source seam.

A `PodSource` hands out immutable `ClusterView`s. The lab's source is a JSON file
(`FileClusterStore`); a Kubernetes informer-backed source would implement the same protocol.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
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


def _view_from_doc(doc: Mapping[str, Any]) -> ClusterView:
    pods = {uid: PodMeta.from_json(p) for uid, p in doc.get("pods", {}).items()}
    nss = {
        name: NamespaceMeta(name, MappingProxyType(dict(ns.get("labels", {}))))
        for name, ns in doc.get("namespaces", {}).items()
    }
    return ClusterView(MappingProxyType(pods), MappingProxyType(nss), int(doc.get("revision", 0)))


class FileClusterStore:
    """A cluster's pods and namespaces in one JSON file, written atomically under a lock.

    The lab (the writer) mutates it with `update`; agents read it with `view`, which re-reads the
    file only when its (mtime, size, inode) changed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._cache_key: tuple[int, int, int] | None = None
        self._cache = ClusterView()

    def view(self) -> ClusterView:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ClusterView()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._cache_key:
            self._cache = _view_from_doc(self._read())
            self._cache_key = key
        return self._cache

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"cluster store {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"cluster store {self.path} must hold a JSON object")
        return doc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def update(self, mutate: Callable[[dict[str, Any]], None]) -> ClusterView:
        """Apply ``mutate`` to the raw document under an exclusive lock, then replace the file."""
        with self._locked():
            doc = self._read()
            doc.setdefault("pods", {})
            doc.setdefault("namespaces", {})
            mutate(doc)
            doc["revision"] = int(doc.get("revision", 0)) + 1
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path) or ".", prefix=".store-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        return _view_from_doc(doc)

    def put_pod(self, pod: PodMeta) -> None:
        def mutate(doc: dict[str, Any]) -> None:
            doc["pods"][pod.uid] = pod.to_json()
            doc["namespaces"].setdefault(pod.namespace, {"labels": {}})

        self.update(mutate)

    def delete_pod(self, uid: str) -> None:
        self.update(lambda doc: doc["pods"].pop(uid, None))

    def set_namespace_labels(self, name: str, labels: Mapping[str, str]) -> None:
        def mutate(doc: dict[str, Any]) -> None:
            doc["namespaces"][name] = {"labels": dict(labels)}

        self.update(mutate)


def with_ips(pod: PodMeta, ips: tuple[str, ...], netns: str | None) -> PodMeta:
    return replace(pod, ips=ips, netns=netns)
