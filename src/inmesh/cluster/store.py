"""The lab's pod source: a cluster's pods and namespaces in one JSON file.

Written atomically under a lock by the lab (the writer); read by agents and the CNI plugin,
which re-read it only when its (mtime, size, inode) changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from inmesh.cluster.model import ClusterView, NamespaceMeta, PodMeta
from inmesh.errors import ConfigError
from inmesh.fsutil import atomic_write

STORE_FILE_MODE = 0o644
"""The store holds no secrets; readers (agents, the CNI plugin) need not be its owner."""


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
            data = json.dumps(doc, indent=1, sort_keys=True).encode()
            atomic_write(self.path, data, mode=STORE_FILE_MODE)
        return _view_from_doc(doc)

    def put_pod(self, pod: PodMeta) -> None:
        def mutate(doc: dict[str, Any]) -> None:
            doc["pods"][pod.uid] = pod.to_json()
            doc["namespaces"].setdefault(pod.namespace, {"labels": {}})

        self.update(mutate)

    def delete_pod(self, uid: str) -> None:
        self.update(lambda doc: doc["pods"].pop(uid, None))

    def annotate(self, uid: str, key: str, value: str | None) -> None:
        pod = self.view().pods.get(uid)
        if pod is None or pod.annotations.get(key) == value:
            return

        def mutate(doc: dict[str, Any]) -> None:
            pod = doc["pods"].get(uid)
            if pod is None:
                return
            annotations = pod.setdefault("annotations", {})
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value

        self.update(mutate)

    def set_namespace_labels(self, name: str, labels: Mapping[str, str]) -> None:
        def mutate(doc: dict[str, Any]) -> None:
            doc["namespaces"][name] = {"labels": dict(labels)}

        self.update(mutate)
