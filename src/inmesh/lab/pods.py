"""Pods, created the way a container runtime creates a sandbox: store, netns, CNI ADD.

Order as on a real node: the pod exists in the API (store, phase Pending) before its sandbox,
so the CNI plugin and the agent can look it up; the sandbox gets its netns and the CNI chain
runs inside the *node's* netns; the IPs go back to the store (phase Running). A failed ADD is
retried like a runtime retries a sandbox, then fully undone. Deletion runs the other way.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from inmesh.cluster.model import PodMeta
from inmesh.cluster.store import FileClusterStore
from inmesh.cni.runtime import CniInvocation, CniPluginError, CniRuntime
from inmesh.errors import ConfigError, InmeshError, NotFoundError
from inmesh.lab import namespaces, procs
from inmesh.lab.cniconf import result_ips
from inmesh.lab.layout import LabLayout, netns_path, pod_netns_name
from inmesh.lab.settings import CNI_PLUGIN_DIR, LabSettings
from inmesh.lab.state import LabState, LabStateFile, PodRecord
from inmesh.netns import nsenter_argv

POD_IFNAME = "eth0"


class PodAddFailed(InmeshError):
    """CNI ADD failed on every attempt; carries the plugin's own message."""


@dataclass(frozen=True)
class PodSpec:
    name: str
    namespace: str = "default"
    service_account: str = "default"
    labels: Mapping[str, str] | None = None
    node: str | None = None


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def check_dns_label(kind: str, value: str) -> str:
    """Pod, namespace and service account names are DNS-1123 labels, as in Kubernetes."""
    if not _DNS_LABEL.fullmatch(value):
        raise ConfigError(
            f"bad {kind} {value!r}: lowercase letters, digits and '-', at most 63,"
            " starting and ending alphanumeric"
        )
    return value


def cni_args(rec: PodRecord) -> dict[str, str]:
    """CNI_ARGS as kubelet/containerd pass them (IgnoreUnknown lets plugins skip the K8S_ ones)."""
    return {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": rec.namespace,
        "K8S_POD_NAME": rec.name,
        "K8S_POD_INFRA_CONTAINER_ID": rec.container_id,
        "K8S_POD_UID": rec.uid,
    }


def pick_node(state: LabState, wanted: str | None) -> str:
    """The requested node, or the one with the fewest pods (first by index on a tie)."""
    if not state.nodes:
        raise NotFoundError("the lab has no nodes: run `inmesh lab up` first")
    if wanted is not None:
        if wanted not in state.nodes:
            raise NotFoundError(f"no node {wanted!r} (nodes: {', '.join(sorted(state.nodes))})")
        return wanted
    load = {name: 0 for name in state.nodes}
    for pod in state.pods.values():
        if pod.node in load:
            load[pod.node] += 1
    return min(state.nodes.values(), key=lambda n: (load[n.name], n.index)).name


class PodRuntime:
    def __init__(
        self,
        lab: LabLayout,
        state: LabStateFile,
        store: FileClusterStore,
        settings: LabSettings,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.lab = lab
        self.state = state
        self.store = store
        self.settings = settings
        self._sleep = sleep

    def cni_for(self, node: str) -> CniRuntime:
        n = self.lab.node(node)
        return CniRuntime(
            str(n.conf_dir),
            [str(n.bin_dir), CNI_PLUGIN_DIR],
            str(n.cni_cache_dir),
            exec_prefix=tuple(nsenter_argv(n.netns_path)),
            timeout=self.settings.cni_timeout_s,
        )

    @staticmethod
    def invocation(rec: PodRecord) -> CniInvocation:
        return CniInvocation(
            container_id=rec.container_id,
            netns=netns_path(rec.netns),
            ifname=POD_IFNAME,
            args=cni_args(rec),
        )

    def add(self, spec: PodSpec) -> PodMeta:
        for kind, value in (("pod name", spec.name), ("namespace", spec.namespace),
                            ("service account", spec.service_account)):  # fmt: skip
            check_dns_label(kind, value)
        state = self.state.load()
        if self.store.view().pod_by_name(spec.namespace, spec.name) is not None:
            raise ConfigError(f"pod {spec.namespace}/{spec.name} already exists")
        node = pick_node(state, spec.node)
        uid = str(uuid.uuid4())
        rec = PodRecord(
            uid, spec.name, spec.namespace, node, pod_netns_name(uid), secrets.token_hex(32)
        )
        pod = PodMeta(
            uid=uid, name=spec.name, namespace=spec.namespace, node=node,
            service_account=spec.service_account, labels=dict(spec.labels or {}),
            phase="Pending",
        )  # fmt: skip
        self.state.update(lambda s: s.with_pod(rec))  # intent first: `down` can undo all
        self.store.put_pod(pod)
        path = netns_path(rec.netns)
        try:
            namespaces.ensure(rec.netns)
            ips = self._cni_add(rec)
            view = self.store.update(lambda doc: _mark_running(doc, uid, ips, path))
        except BaseException:
            self.delete_sandbox(rec)
            raise
        return view.pods[uid]

    def _cni_add(self, rec: PodRecord) -> tuple[str, ...]:
        cni = self.cni_for(rec.node)
        inv = self.invocation(rec)
        backoff = self.settings.pod_add_backoff_s
        last: CniPluginError | None = None
        for attempt in range(self.settings.pod_add_attempts):
            if attempt:
                self._sleep(backoff)
                backoff *= 2
            try:
                return result_ips(cni.add(inv))
            except CniPluginError as exc:  # the runtime has already rolled the chain back
                last = exc
        raise PodAddFailed(
            f"pod {rec.namespace}/{rec.name}: CNI ADD failed"
            f" {self.settings.pod_add_attempts} times; last: {last}"
        ) from last

    def delete(self, namespace: str, name: str) -> PodRecord:
        """Delete a pod: from the store first (the agent un-enrolls), then its sandbox."""
        rec = self.find(namespace, name)
        problems = self.delete_sandbox(rec)
        if problems:
            raise InmeshError("; ".join(problems))
        return rec

    def delete_sandbox(self, rec: PodRecord) -> list[str]:
        """Store entry, CNI DEL, processes in the pod, netns, record. Tolerates missing parts."""
        problems: list[str] = []
        self.store.delete_pod(rec.uid)
        for proc in rec.processes.values():
            procs.stop(proc, self.settings.stop_grace_s, self.settings.poll_interval_s)
        if namespaces.exists(self.lab.node(rec.node).netns):
            try:
                self.cni_for(rec.node).delete(self.invocation(rec))
            except (CniPluginError, InmeshError) as exc:
                problems.append(f"CNI DEL of {rec.namespace}/{rec.name}: {exc}")
        try:
            namespaces.delete(rec.netns)
        except InmeshError as exc:
            problems.append(str(exc))
        self.state.update(lambda s: s.without_pod(rec.uid))
        return problems

    def find(self, namespace: str, name: str) -> PodRecord:
        for rec in self.state.load().pods.values():
            if rec.namespace == namespace and rec.name == name:
                return rec
        raise NotFoundError(f"no pod {namespace}/{name} in the lab")

    def exec_argv(self, namespace: str, name: str, cmd: list[str]) -> list[str]:
        """The command line that runs ``cmd`` in the pod's network namespace only."""
        if not cmd:
            raise ConfigError("no command given: inmesh lab pod exec NAME -- CMD...")
        rec = self.find(namespace, name)
        if not namespaces.exists(rec.netns):
            raise NotFoundError(f"pod {namespace}/{name} has no netns {rec.netns}")
        return [*nsenter_argv(netns_path(rec.netns)), *cmd]


def _mark_running(doc: dict[str, Any], uid: str, ips: tuple[str, ...], path: str) -> None:
    pod = doc["pods"].get(uid)
    if pod is None:
        raise NotFoundError(f"pod {uid} vanished from the store during creation")
    pod.update(ips=list(ips), netns=path, phase="Running")
