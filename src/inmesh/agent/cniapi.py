"""The agent's answers to the CNI plugin (`/cmdadd`, `/cmddel`, `/cmdcheck`) and to operators.

`/cmdadd` returns 200 only once a mesh pod is fully redirected (rules verified, proxy acked), or
when the pod is not a mesh pod; anything else is a 500 whose body the plugin shows the runtime,
which then retries the sandbox. The body format is Istio's (`Netns`, `PodName`, `PodNamespace`,
`IPs[].Address.IP`) plus `PodUID` and `ContainerID`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inmesh.agent.httpapi import BadRequest, Request, Response
from inmesh.agent.reconcile import Reconciler
from inmesh.agent.service import EnrollError, PodRegistry, PodState
from inmesh.agent.settings import AgentSettings
from inmesh.cluster.enrollment import decide
from inmesh.cluster.model import PodMeta, PodSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginEvent:
    netns: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    container_id: str
    ips: tuple[str, ...]


def parse_event(obj: Any) -> PluginEvent:
    """Validate a plugin request body; raises BadRequest with what is wrong."""
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")

    def text(key: str, required: bool = False) -> str:
        value = obj.get(key) or ""
        if not isinstance(value, str) or (required and not value):
            raise BadRequest(f"{key} must be a non-empty string" if required else f"{key}: string")
        return value

    ips = []
    for item in obj.get("IPs") or []:
        try:
            ips.append(str(ipaddress.ip_address(item["Address"]["IP"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"bad IPs entry {item!r}") from exc
    return PluginEvent(
        netns=text("Netns"),
        pod_name=text("PodName", required=True),
        pod_namespace=text("PodNamespace") or "default",
        pod_uid=text("PodUID"),
        container_id=text("ContainerID"),
        ips=tuple(ips),
    )


class CniApi:
    def __init__(
        self,
        settings: AgentSettings,
        source: PodSource,
        registry: PodRegistry,
        reconciler: Reconciler,
        ready: Callable[[], bool],
        backend_name: str,
    ) -> None:
        self.settings = settings
        self.source = source
        self.registry = registry
        self.reconciler = reconciler
        self.ready = ready
        self.backend_name = backend_name

    async def handle(self, req: Request) -> Response:
        route = (req.method, req.path.split("?", 1)[0])
        if route == ("POST", "/cmdadd"):
            return await self.cmd_add(parse_event(req.json()))
        if route == ("POST", "/cmddel"):
            return await self.cmd_del(parse_event(req.json()))
        if route == ("POST", "/cmdcheck"):
            return await self.cmd_check(parse_event(req.json()))
        if route == ("GET", "/status"):
            return Response.json(200, self.status())
        if route == ("GET", "/healthz"):
            return Response.text(200, "ok\n")
        if route == ("GET", "/readyz"):
            ok = self.ready()
            return Response.text(200 if ok else 503, "ready\n" if ok else "not ready\n")
        return Response.text(404, f"no route for {req.method} {req.path}\n")

    async def _lookup(self, ev: PluginEvent) -> PodMeta | None:
        """Find the pod, waiting a little for a source that lags behind the runtime."""
        deadline = time.monotonic() + self.settings.pod_lookup_timeout
        while True:
            pod = self.source.view().pod_by_name(ev.pod_namespace, ev.pod_name)
            if pod is not None and (not ev.pod_uid or pod.uid == ev.pod_uid):
                return pod
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.02)

    async def cmd_add(self, ev: PluginEvent) -> Response:
        pod = await self._lookup(ev)
        if pod is None:
            # Fail closed: a stale source must not let a mesh pod start uncaptured.
            return Response.text(500, f"pod {ev.pod_namespace}/{ev.pod_name} "
                                 f"(uid {ev.pod_uid or '?'}) is not known to the agent yet\n")
        if pod.node != self.settings.node:
            return Response.text(500, f"pod {ev.pod_namespace}/{ev.pod_name} is scheduled on "
                                 f"{pod.node}, this agent serves {self.settings.node}\n")
        decision = decide(pod, self.source.view().namespace(pod.namespace),
                          self.settings.excluded_namespaces)
        if not decision.enroll:
            return Response.json(200, {"enrolled": False, "reason": decision.reason})
        if not ev.netns:
            return Response.text(500, f"pod {pod.namespace}/{pod.name}: no netns in request\n")
        try:
            await self.registry.enroll(pod, ev.netns, ev.ips or pod.ips, ev.container_id)
        except EnrollError as exc:
            log.warning("cmdadd %s/%s failed: %s", pod.namespace, pod.name, exc)
            return Response.text(500, f"{exc}\n")
        return Response.json(200, {"enrolled": True, "reason": decision.reason})

    def _entry_uid(self, ev: PluginEvent) -> str | None:
        for uid, entry in self.registry.pods.items():
            if uid == ev.pod_uid or (
                not ev.pod_uid and (entry.namespace, entry.name) == (ev.pod_namespace, ev.pod_name)
            ):
                if ev.container_id and entry.container_id not in ("", ev.container_id):
                    return None  # a DEL for an older sandbox of this pod
                return uid
        return None

    async def cmd_del(self, ev: PluginEvent) -> Response:
        uid = self._entry_uid(ev)
        if uid is not None:
            await self.registry.unenroll(uid, pod_deleted=True)
        return Response.json(200, {"removed": uid is not None})

    async def cmd_check(self, ev: PluginEvent) -> Response:
        uid = self._entry_uid(ev)
        pod = await self._lookup(ev)
        if pod is None:
            return Response.text(500, f"pod {ev.pod_namespace}/{ev.pod_name} is not known\n")
        wanted = decide(pod, self.source.view().namespace(pod.namespace),
                        self.settings.excluded_namespaces)
        if not wanted.enroll:
            return Response.json(200, {"enrolled": False, "reason": wanted.reason})
        entry = self.registry.pods.get(uid or "")
        if entry is None or entry.state is not PodState.ENROLLED:
            return Response.text(500, f"pod {pod.namespace}/{pod.name} should be in the mesh "
                                 f"but is {entry.state.value if entry else 'not enrolled'}\n")
        drift = await asyncio.to_thread(self.registry.backend.verify, entry.fd_path, entry.spec)
        if drift:
            return Response.text(500, "rule drift: " + "; ".join(drift) + "\n")
        return Response.json(200, {"enrolled": True, "reason": wanted.reason})

    def status(self) -> dict[str, Any]:
        pods = self.registry.status()
        view = self.source.view()
        for uid, err in self.reconciler.last_errors.items():
            pod = view.pods.get(uid)
            entry = pods.setdefault(uid, {
                "state": "failed",
                "name": pod.name if pod else "?",
                "namespace": pod.namespace if pod else "?",
                "ips": list(pod.ips) if pod else [],
            })
            entry["error"] = entry.get("error") or err
        return {
            "node": self.settings.node,
            "ready": self.ready(),
            "backend": self.backend_name,
            "ztunnelConnections": self.registry.zds.connection_count,
            "pods": pods,
        }
