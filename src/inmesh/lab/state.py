"""lab.json: what the lab created, so that `down` can undo it even after a crash.

Written *before* each thing is created (intent first): a node or pod record exists before its
netns does, a process record right after the fork. `LabStateFile.update` is an atomic
read-modify-write under a lock; the records are frozen and replaced, never mutated.

Version 2 adds the cluster level: processes that belong to no node (the control plane), where
the control plane listens and the trust domain. A version 1 file loads as a lab without a
control plane (`up` adds one); a file from a newer inmesh is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from inmesh.errors import ConfigError
from inmesh.identity import DEFAULT_TRUST_DOMAIN

STATE_VERSION = 2


@dataclass(frozen=True)
class ProcessRecord:
    """A process the lab started: enough to recognise it again (pid reuse) and to stop it."""

    pid: int
    start_ticks: int
    """Field 22 of /proc/<pid>/stat at spawn: a reused pid has a different start time."""
    signature: tuple[str, ...]
    """Arguments that must appear, in order, in /proc/<pid>/cmdline."""
    log: str

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "startTicks": self.start_ticks,
            "signature": list(self.signature),
            "log": self.log,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            int(obj["pid"]),
            int(obj["startTicks"]),
            tuple(str(a) for a in obj["signature"]),
            str(obj["log"]),
        )


def _procs_to_json(procs: Mapping[str, ProcessRecord]) -> dict[str, Any]:
    return {name: p.to_json() for name, p in procs.items()}


def _procs_from_json(obj: Mapping[str, Any]) -> Mapping[str, ProcessRecord]:
    return MappingProxyType({k: ProcessRecord.from_json(v) for k, v in obj.items()})


def _no_procs() -> Mapping[str, ProcessRecord]:
    return MappingProxyType({})


@dataclass(frozen=True)
class NodeRecord:
    name: str
    index: int
    processes: Mapping[str, ProcessRecord] = field(default_factory=_no_procs)
    """By role: "agent", "ztunnel"."""

    def with_process(self, role: str, proc: ProcessRecord | None) -> NodeRecord:
        procs = {k: v for k, v in self.processes.items() if k != role}
        if proc is not None:
            procs[role] = proc
        return replace(self, processes=MappingProxyType(procs))

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "processes": _procs_to_json(self.processes)}


@dataclass(frozen=True)
class PodRecord:
    """A pod sandbox: the runtime's side of a pod (the store holds the API side)."""

    uid: str
    name: str
    namespace: str
    node: str
    netns: str
    container_id: str
    processes: Mapping[str, ProcessRecord] = field(default_factory=_no_procs)
    """Processes the lab runs inside the pod (the demo's servers), by name."""

    def with_process(self, role: str, proc: ProcessRecord | None) -> PodRecord:
        procs = {k: v for k, v in self.processes.items() if k != role}
        if proc is not None:
            procs[role] = proc
        return replace(self, processes=MappingProxyType(procs))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "node": self.node,
            "netns": self.netns,
            "containerId": self.container_id,
            "processes": _procs_to_json(self.processes),
        }


@dataclass(frozen=True)
class LabState:
    backend: str = "auto"
    node_prefix: str = "node"
    nodes: Mapping[str, NodeRecord] = field(default_factory=lambda: MappingProxyType({}))
    pods: Mapping[str, PodRecord] = field(default_factory=lambda: MappingProxyType({}))
    processes: Mapping[str, ProcessRecord] = field(default_factory=_no_procs)
    """Cluster-level processes by role ("controlplane")."""
    controlplane_socket: str = ""
    """The control plane's unix socket path; empty in a plaintext lab, or one made before the
    lab had a control plane."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    mtls: bool = True
    """Mesh pods talk HBONE through a control plane; False: a plaintext lab (no control
    plane, proxies relay in plaintext), fixed at the first ``up``."""

    @property
    def controlplane_target(self) -> str:
        """The gRPC target proxies dial (``unix:/path``), or "" if there is no control plane."""
        return f"unix:{self.controlplane_socket}" if self.controlplane_socket else ""

    def with_process(self, role: str, proc: ProcessRecord | None) -> LabState:
        procs = {k: v for k, v in self.processes.items() if k != role}
        if proc is not None:
            procs[role] = proc
        return replace(self, processes=MappingProxyType(procs))

    def with_node(self, node: NodeRecord) -> LabState:
        return replace(self, nodes=MappingProxyType({**self.nodes, node.name: node}))

    def with_pod(self, pod: PodRecord) -> LabState:
        return replace(self, pods=MappingProxyType({**self.pods, pod.uid: pod}))

    def without_pod(self, uid: str) -> LabState:
        return replace(
            self, pods=MappingProxyType({k: v for k, v in self.pods.items() if k != uid})
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "backend": self.backend,
            "nodePrefix": self.node_prefix,
            "nodes": {name: n.to_json() for name, n in self.nodes.items()},
            "pods": {uid: p.to_json() for uid, p in self.pods.items()},
            "processes": _procs_to_json(self.processes),
            "controlplaneSocket": self.controlplane_socket,
            "trustDomain": self.trust_domain,
            "mtls": self.mtls,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LabState:
        version = obj.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError(f"malformed lab state: version {version!r} is not an integer")
        if version > STATE_VERSION:
            raise ConfigError(
                f"lab state version {version!r} was written by a newer inmesh (this one reads"
                f" up to {STATE_VERSION}): use that inmesh to run `lab down`"
            )
        try:
            nodes = {
                name: NodeRecord(name, int(n["index"]), _procs_from_json(n.get("processes", {})))
                for name, n in obj.get("nodes", {}).items()
            }
            pods = {
                uid: PodRecord(
                    uid,
                    str(p["name"]),
                    str(p["namespace"]),
                    str(p["node"]),
                    str(p["netns"]),
                    str(p["containerId"]),
                    _procs_from_json(p.get("processes", {})),
                )
                for uid, p in obj.get("pods", {}).items()
            }
            return cls(
                str(obj.get("backend", "auto")),
                str(obj.get("nodePrefix", "node")),
                MappingProxyType(nodes),
                MappingProxyType(pods),
                _procs_from_json(obj.get("processes", {})),
                str(obj.get("controlplaneSocket", "")),
                str(obj.get("trustDomain", DEFAULT_TRUST_DOMAIN)),
                _flag(obj.get("mtls", True), "mtls"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed lab state: {exc!r}") from exc


class LabStateFile:
    """lab.json on disk: `load` reads, `update` applies a pure function under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> LabState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return LabState()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"lab state {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"lab state {self.path} must hold a JSON object")
        return LabState.from_json(doc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def update(self, change: Callable[[LabState], LabState]) -> LabState:
        with self._locked():
            new = change(self.load())
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lab-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(new.to_json(), f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        return new


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"malformed lab state: {name} {value!r} is not true or false")
    return value
