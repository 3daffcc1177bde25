"""What inmesh-cni tells the node agent, sans-io: its config entry, which pods, the event body.

The body is Istio's plugin event (Go field names: ``Netns``, ``PodName``, ``PodNamespace``, ``IPs``)
plus ``PodUID``, ``ContainerID`` and ``IfName``, so an Istio agent and ours can read each other's
events. Reference: ../shared/reference/istio-inpod.md section 2.2.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inmesh.cni.spec import ERR_INVALID_CONFIG, CniError, CniRequest, K8sArgs, parse_cidr
from inmesh.constants import PLUGIN_SOCKET_NAME

PLUGIN_TYPE = "inmesh-cni"
DEFAULT_AGENT_RUN_DIR = "/var/run/inmesh"
DEFAULT_AGENT_TIMEOUT_SECONDS = 15.0
"""How long ADD waits for the agent's answer. The agent answers only after it has written the
pod's rules and heard ztunnel's ZDS ack (5 s in Istio), so this must sit well above that; kubelet
gives the whole sandbox setup minutes, so 15 s costs nothing when things are healthy."""
MAX_AGENT_TIMEOUT_SECONDS = 600.0
"""Upper bound accepted in the config: past this, the runtime's own deadline fires first."""
DEL_TIMEOUT_CAP_SECONDS = 5.0
"""DEL is best effort: never hold a pod teardown longer than this on a hung agent."""
AGENT_REPLY_MAX_BYTES = 1 << 20
"""How much of the agent's reply we read (Istio reads 1 MiB of an error body)."""
REPLY_IN_MSG_MAX_CHARS = 4096
"""How much of the agent's reply goes into a CNI error msg (the runtime logs it whole)."""
DEFAULT_NAMESPACE = "default"
"""Namespace assumed when CNI_ARGS has a pod name but no K8S_POD_NAMESPACE (podman, CNI tools)."""

ERR_AGENT_REJECTED = 100
"""Plugin-specific code: the agent answered a CHECK with something other than 200."""

PATH_ADD, PATH_DEL, PATH_CHECK = "/cmdadd", "/cmddel", "/cmdcheck"


@dataclass(frozen=True)
class PluginConfig:
    """Our entry in the conflist (keys are snake_case like Istio's)."""

    agent_run_dir: str = DEFAULT_AGENT_RUN_DIR
    exclude_namespaces: frozenset[str] = frozenset()
    agent_timeout_seconds: float = DEFAULT_AGENT_TIMEOUT_SECONDS
    pod_source: str = ""
    """Path of the cluster store, read only when the agent cannot be asked: a pod that is not
    in the mesh may then start; a mesh pod (or an unknown one) still fails closed."""

    @property
    def socket_path(self) -> str:
        return f"{self.agent_run_dir.rstrip('/')}/{PLUGIN_SOCKET_NAME}"

    @classmethod
    def from_netconf(cls, raw: Mapping[str, Any]) -> PluginConfig:
        """Read our keys; a wrong type or value is an invalid network config (code 7)."""
        run_dir = raw.get("cni_agent_run_dir", DEFAULT_AGENT_RUN_DIR)
        if not isinstance(run_dir, str) or not run_dir:
            raise CniError(ERR_INVALID_CONFIG, "cni_agent_run_dir must be a non-empty string")
        excluded = raw.get("exclude_namespaces", [])
        if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
            raise CniError(ERR_INVALID_CONFIG, "exclude_namespaces must be a list of strings")
        timeout = raw.get("agent_timeout_seconds", DEFAULT_AGENT_TIMEOUT_SECONDS)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_AGENT_TIMEOUT_SECONDS
        ):
            raise CniError(
                ERR_INVALID_CONFIG,
                f"agent_timeout_seconds must be a number in (0, {MAX_AGENT_TIMEOUT_SECONDS:g}]",
            )
        pod_source = raw.get("pod_source", "")
        if not isinstance(pod_source, str):
            raise CniError(ERR_INVALID_CONFIG, "pod_source must be a string (a file path)")
        return cls(run_dir, frozenset(excluded), float(timeout), pod_source)


def plugin_entry(
    agent_run_dir: str = DEFAULT_AGENT_RUN_DIR,
    exclude_namespaces: tuple[str, ...] = (),
    agent_timeout_seconds: float = DEFAULT_AGENT_TIMEOUT_SECONDS,
    pod_source: str = "",
) -> dict[str, Any]:
    """The object the installer appends to the chain (no cniVersion: the list supplies it)."""
    entry: dict[str, Any] = {
        "type": PLUGIN_TYPE,
        "name": PLUGIN_TYPE,
        "cni_agent_run_dir": agent_run_dir,
        "exclude_namespaces": list(exclude_namespaces),
        "agent_timeout_seconds": agent_timeout_seconds,
    }
    if pod_source:
        entry["pod_source"] = pod_source
    return entry


@dataclass(frozen=True)
class PodRef:
    name: str
    namespace: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_of(request: CniRequest) -> PodRef | None:
    """The pod behind this sandbox, or None when CNI_ARGS names no pod (not a Kubernetes pod)."""
    k8s = K8sArgs.from_args(request.args)
    if k8s.pod_name is None:
        return None
    return PodRef(k8s.pod_name, k8s.pod_namespace or DEFAULT_NAMESPACE, k8s.pod_uid or "")


def skip_reason(pod: PodRef | None, config: PluginConfig) -> str | None:
    """Why the agent need not hear about this sandbox, or None if it must."""
    if pod is None:
        return "not a Kubernetes pod (no K8S_POD_NAME in CNI_ARGS)"
    if pod.namespace in config.exclude_namespaces:
        return f"namespace {pod.namespace} is excluded"
    return None


def event_body(request: CniRequest, pod: PodRef, *, with_ips: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Netns": request.netns,
        "PodName": pod.name,
        "PodNamespace": pod.namespace,
        "PodUID": pod.uid,
        "ContainerID": request.container_id,
        "IfName": request.ifname,
    }
    if with_ips:
        prev = request.config.prev_result if request.config else None
        body["IPs"] = event_ips(prev or {})
    return body


def event_ips(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``prevResult`` addresses as Go's ``[]*cniv1.IPConfig`` marshals them (mask in base64)."""
    if "ips" not in result and ("ip4" in result or "ip6" in result):
        legacy = [result[k] for k in ("ip4", "ip6") if isinstance(result.get(k), dict)]
        entries = [{"address": b.get("ip"), "gateway": b.get("gateway")} for b in legacy]
    else:
        entries = result.get("ips", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise CniError(ERR_INVALID_CONFIG, "invalid prevResult: ips must be a list of objects")
    return [_event_ip(entry) for entry in entries]


def _event_ip(entry: Mapping[str, Any]) -> dict[str, Any]:
    iface = parse_cidr(entry.get("address"), "prevResult.ips[].address")
    index = entry.get("interface")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise CniError(ERR_INVALID_CONFIG, f"invalid prevResult.ips[].interface: {index!r}")
    gateway = entry.get("gateway") or ""
    if not isinstance(gateway, str):
        raise CniError(ERR_INVALID_CONFIG, f"invalid prevResult.ips[].gateway: {gateway!r}")
    mask = base64.b64encode(iface.network.netmask.packed).decode("ascii")
    return {
        "Interface": index,
        "Address": {"IP": str(iface.ip), "Mask": mask},
        "Gateway": gateway,
    }


def reply_excerpt(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    if len(text) > REPLY_IN_MSG_MAX_CHARS:
        return text[:REPLY_IN_MSG_MAX_CHARS] + "...(truncated)"
    return text
