"""The lab: nodes and pods on this machine, as a cluster plus container runtime would make them.

`Lab` is the surface the CLI and the demo drive. `up` converges (creates what is missing,
restarts what died): the control plane first, then every node, then the fabric between nodes.
`down` undoes whatever exists, from lab.json and from what it can find, and is safe to repeat
or to run after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inmesh.cluster.model import PodMeta
from inmesh.cluster.store import FileClusterStore
from inmesh.errors import ConfigError, InmeshError, NotFoundError
from inmesh.identity import DEFAULT_TRUST_DOMAIN, SpiffeId
from inmesh.lab import fabric, namespaces
from inmesh.lab.controlplane import ControlPlaneManager
from inmesh.lab.labels import LabelOp, apply_label_ops
from inmesh.lab.layout import LabLayout, check_node_name, netns_path
from inmesh.lab.nodes import NodeManager
from inmesh.lab.observe import observe_controlplane, observe_node
from inmesh.lab.pods import PodRuntime, PodSpec
from inmesh.lab.settings import LabSettings, default_root
from inmesh.lab.state import LabState, LabStateFile, NodeRecord, PodRecord
from inmesh.lab.status import LabStatus, assemble

Report = Callable[[str], None]
BACKENDS = ("auto", "iptables", "nftables")
DEFAULT_NAMESPACE = "default"


def _ignore(_: str) -> None:
    pass


@dataclass(frozen=True)
class DownResult:
    existed: bool
    problems: tuple[str, ...] = ()
    """Steps that failed but did not stop the teardown (reported as warnings)."""


def node_names(prefix: str, count: int) -> list[str]:
    return [check_node_name(f"{prefix}{i}") for i in range(1, count + 1)]


class Lab:
    def __init__(
        self,
        root: str | Path | None = None,
        settings: LabSettings | None = None,
        report: Report = _ignore,
    ) -> None:
        self.layout = LabLayout(Path(root or default_root()))
        self.settings = settings or LabSettings()
        self.report = report
        self.state = LabStateFile(self.layout.state)
        self.store = FileClusterStore(str(self.layout.store))
        self.nodes = NodeManager(self.layout, self.state, self.settings, report)
        self.controlplane = ControlPlaneManager(self.layout, self.state, self.settings, report)
        self.pods = PodRuntime(self.layout, self.state, self.store, self.settings)

    def exists(self) -> bool:
        return self.state.exists()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One `up`/`down` at a time per lab."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.root / ".op.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- up ---------------------------------------------------------------------------------

    def up(
        self,
        nodes: int = 1,
        backend: str = "auto",
        node_prefix: str = "node",
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        mtls: bool = True,
    ) -> LabState:
        """Create or repair the lab. ``mtls`` False makes a plaintext lab: no control plane,
        so the proxies know no mesh workload and relay in plaintext (what the in-pod
        redirection benchmark measures). Backend, trust domain and mtls are fixed at the
        first ``up``."""
        if backend not in BACKENDS:
            raise ConfigError(f"bad backend {backend!r}: one of {', '.join(BACKENDS)}")
        if nodes < 1:
            raise ConfigError("a lab needs at least one node")
        SpiffeId.for_workload("default", "default", trust_domain)  # ConfigError if malformed
        names = node_names(node_prefix, nodes)
        with self._exclusive():
            before = self.state.load()
            state = self.state.update(
                lambda s: self._plan(s, names, backend, node_prefix, trust_domain, mtls)
            )
            self.store.update(
                lambda doc: doc["namespaces"].setdefault(DEFAULT_NAMESPACE, {"labels": {}})
            )
            reissued = self.controlplane.ensure() if state.mtls else {}
            for rec in sorted(state.nodes.values(), key=lambda n: n.index):
                if state.mtls and (rec.name in reissued or not before.controlplane_socket):
                    # Its ztunnel (if any) runs with an old credential or none: start it anew.
                    self.nodes.stop_process(self.state.load().nodes[rec.name], "ztunnel")
                self.nodes.ensure(rec, state.backend)
            if len(state.nodes) > 1:
                indexes = {n.name: n.index for n in state.nodes.values()}
                wired = fabric.ensure(state.node_prefix, indexes)
                self.report(f"nodes linked through {wired} ({fabric.FABRIC_CIDR})")
            return self.state.load()

    def _plan(
        self,
        s: LabState,
        names: list[str],
        backend: str,
        prefix: str,
        trust_domain: str,
        mtls: bool,
    ) -> LabState:
        if not s.nodes:
            s = replace(s, backend=backend, node_prefix=prefix, trust_domain=trust_domain,
                        mtls=mtls)  # fmt: skip
            kind = "" if mtls else ", plaintext: no control plane"
            self.report(f"new lab at {self.layout.root} (backend {backend}{kind})")
        else:
            if mtls != s.mtls:
                self.report(
                    f"lab keeps {'mTLS' if s.mtls else 'plaintext'} (run `down` first to change it)"
                )
            if backend != s.backend:
                self.report(f"lab keeps backend {s.backend} (run `down` first to change it)")
            if trust_domain != s.trust_domain:
                self.report(
                    f"lab keeps trust domain {s.trust_domain} (run `down` first to change it)"
                )
            if prefix != s.node_prefix:
                names = node_names(s.node_prefix, len(names))
            if len(names) < len(s.nodes):
                self.report(f"lab has {len(s.nodes)} nodes; not removing any")
        if s.mtls and not s.controlplane_socket:
            s = replace(s, controlplane_socket=str(self.layout.controlplane_socket))
        next_index = max((n.index for n in s.nodes.values()), default=0) + 1
        for name in names:
            if name not in s.nodes:
                s = s.with_node(NodeRecord(name, next_index))
                next_index += 1
        return s

    # -- down -------------------------------------------------------------------------------

    def down(self) -> DownResult:
        if not self.layout.root.exists():
            return DownResult(existed=False)
        with self._exclusive():
            problems = self._teardown(self._load_tolerant())
            self._remove_short_dir()
            shutil.rmtree(self.layout.root, ignore_errors=True)
            if self.layout.root.exists():
                problems.append(f"could not remove {self.layout.root}")
            else:
                self.report(f"removed {self.layout.root}")
        return DownResult(existed=True, problems=tuple(problems))

    def _remove_short_dir(self) -> None:
        """The sockets that did not fit under the root, and their parent if no lab uses it."""
        short = self.layout.short_dir
        if short.exists():
            shutil.rmtree(short, ignore_errors=True)
            self.report(f"removed {short}")
        with contextlib.suppress(OSError):
            short.parent.rmdir()  # only if empty: other labs may have sockets there

    def _load_tolerant(self) -> LabState:
        try:
            state = self.state.load()
        except InmeshError as exc:
            self.report(f"lab.json unreadable ({exc}); tearing down what the files show")
            state = LabState()
        for d in sorted(self.layout.nodes_dir.glob("*")) if self.layout.nodes_dir.exists() else []:
            if d.is_dir() and d.name not in state.nodes:
                with contextlib.suppress(ConfigError):
                    state = state.with_node(NodeRecord(check_node_name(d.name), 0))
        return state

    def _teardown(self, state: LabState) -> list[str]:
        problems: list[str] = []
        for rec in state.pods.values():
            problems += self.pods.delete_sandbox(rec)
            self.report(f"pod {rec.namespace}/{rec.name}: deleted sandbox {rec.netns}")
        problems += self._delete_unrecorded_pods(state)
        for node in state.nodes.values():
            self.nodes.stop_processes(node)
        self.controlplane.stop(state)
        for node in state.nodes.values():
            problems += self.nodes.teardown(node.name)
        problems += self.controlplane.teardown(state)
        try:
            if fabric.teardown(state.node_prefix):
                self.report(f"deleted {fabric.fabric_netns_name(state.node_prefix)}")
        except InmeshError as exc:
            problems.append(f"fabric: {exc}")
        return problems

    def _delete_unrecorded_pods(self, state: LabState) -> list[str]:
        """Pods in the store without a sandbox record (crash between store and record)."""
        problems: list[str] = []
        try:
            pods = list(self.store.view().pods.values())
        except InmeshError as exc:
            return [f"cluster store unreadable: {exc}"]
        for pod in pods:
            if pod.uid in state.pods or not pod.netns:
                continue
            name = Path(pod.netns).name
            if pod.netns == netns_path(name) and name.startswith("inmesh-pod-"):
                try:
                    namespaces.delete(name)
                except InmeshError as exc:
                    problems.append(str(exc))
        return problems

    # -- pods and labels --------------------------------------------------------------------

    def add_pod(self, spec: PodSpec) -> PodMeta:
        return self.pods.add(spec)

    def delete_pod(self, namespace: str, name: str) -> PodRecord:
        return self.pods.delete(namespace, name)

    def exec_argv(self, namespace: str, name: str, cmd: list[str]) -> list[str]:
        return self.pods.exec_argv(namespace, name, cmd)

    def label_pod(self, namespace: str, name: str, ops: Iterable[LabelOp]) -> dict[str, str]:
        ops = list(ops)
        pod = self.store.view().pod_by_name(namespace, name)
        if pod is None:
            raise NotFoundError(f"no pod {namespace}/{name} in the cluster store")

        def mutate(doc: dict[str, Any]) -> None:
            entry = doc["pods"].get(pod.uid)
            if entry is None:
                raise NotFoundError(f"pod {namespace}/{name} was deleted meanwhile")
            entry["labels"] = apply_label_ops(entry.get("labels", {}), ops)

        return dict(self.store.update(mutate).pods[pod.uid].labels)

    def label_namespace(self, namespace: str, ops: Iterable[LabelOp]) -> dict[str, str]:
        ops = list(ops)

        def mutate(doc: dict[str, Any]) -> None:
            ns = doc["namespaces"].setdefault(namespace, {"labels": {}})
            ns["labels"] = apply_label_ops(ns.get("labels", {}), ops)

        return dict(self.store.update(mutate).namespace(namespace).labels)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> LabStatus:
        root = str(self.layout.root)
        if not self.exists():
            return assemble(root, None, self.store.view(), {})
        state = self.state.load()
        live = {n: observe_node(self.layout, rec, self.settings) for n, rec in state.nodes.items()}
        cp = observe_controlplane(self.layout, state, self.settings)
        return assemble(root, state, self.store.view(), live, cp)
