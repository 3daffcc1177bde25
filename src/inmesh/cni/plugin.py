"""The ``inmesh-cni`` executable: a chained CNI plugin that tells the node agent about each pod.

It runs last in the node's chain, once per sandbox, so it imports only the standard library and the
sans-io CNI modules. stdout carries exactly one CNI result or error object; logs go to stderr as
JSON lines. ADD fails closed: unless the agent answers 200 (pod redirected, or not a mesh pod),
ADD fails with code 11 and the runtime retries, so a pod never starts uncaptured.

Decisions: ADD and CHECK without prevResult are config errors (code 7: we must run chained after
the interface plugin). DEL never fails for the agent's sake, nor for an invalid inmesh entry (a
DEL that can never succeed would wedge the sandbox forever). GC and STATUS (spec 1.1) succeed
without asking the agent: a down agent blocks mesh pods through ADD, not every pod on the node.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from inmesh.cni.event import (
    AGENT_REPLY_MAX_BYTES,
    DEL_TIMEOUT_CAP_SECONDS,
    ERR_AGENT_REJECTED,
    PATH_ADD,
    PATH_CHECK,
    PATH_DEL,
    PluginConfig,
    PodRef,
    event_body,
    pod_of,
    reply_excerpt,
    skip_reason,
)
from inmesh.cni.spec import (
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_IO,
    ERR_TRY_AGAIN_LATER,
    MAX_CONFIG_BYTES,
    CniError,
    CniRequest,
    Command,
    NetConf,
    convert_result,
    error_object,
    parse_request,
    requested_version,
    version_reply,
)


class AgentUnreachableError(Exception):
    """No HTTP answer from the agent: no socket, refused, reset, timed out, or garbled."""


@dataclass(frozen=True)
class AgentReply:
    status: int
    body: bytes


Transport = Callable[[str, str, Mapping[str, Any], float], AgentReply]
"""(socket path, URL path, JSON body, timeout seconds) -> reply; raises AgentUnreachableError."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix stream socket; the timeout bounds each socket operation."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("unix", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def post_to_agent(
    socket_path: str, url_path: str, body: Mapping[str, Any], timeout: float
) -> AgentReply:
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        payload = json.dumps(body).encode()
        conn.request("POST", url_path, payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return AgentReply(response.status, response.read(AGENT_REPLY_MAX_BYTES))
    except (OSError, http.client.HTTPException) as exc:
        raise AgentUnreachableError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def run(request: CniRequest, post: Transport = post_to_agent) -> dict[str, Any] | None:
    """Carry out one request; returns the object to print on stdout (None: print nothing)."""
    if request.command is Command.VERSION:
        return version_reply(request.cni_version)
    config = request.config
    if config is None or request.command in (Command.GC, Command.STATUS):
        return None
    if request.command is Command.DEL:
        _delete(request, config, post)
        return None
    if config.prev_result is None:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"{request.command.value} without prevResult: inmesh-cni must run chained, after the "
            "plugin that creates the pod's interface",
        )
    result = convert_result(config.prev_result, config.cni_version)
    settings = PluginConfig.from_netconf(config.raw)
    pod = pod_of(request)
    reason = skip_reason(pod, settings)
    if pod is None or reason is not None:
        _log("info", "not asking the agent", reason=reason, container=request.container_id)
        return result if request.command is Command.ADD else None
    if request.command is Command.ADD:
        _add(request, settings, pod, post)
        return result
    _check(request, settings, pod, post)
    return None


def _add(request: CniRequest, settings: PluginConfig, pod: PodRef, post: Transport) -> None:
    body = event_body(request, pod, with_ips=True)
    try:
        reply = post(settings.socket_path, PATH_ADD, body, settings.agent_timeout_seconds)
    except AgentUnreachableError as exc:
        local = local_decision(settings, pod)
        if local is not None and not local[0]:
            _log("warning", "agent unreachable; pod is not a mesh pod, letting it start",
                 pod=str(pod), reason=local[1], error=str(exc))
            return
        why = "it belongs in the mesh" if local else "whether it belongs in the mesh is unknown"
        raise CniError(
            ERR_TRY_AGAIN_LATER,
            f"inmesh agent unreachable at {settings.socket_path} ({exc}); pod {pod} is held back "
            f"rather than started without traffic capture ({why})",
        ) from None
    if reply.status != 200:
        raise CniError(
            ERR_TRY_AGAIN_LATER,
            f"inmesh agent did not enroll pod {pod}: HTTP {reply.status}: "
            f"{reply_excerpt(reply.body)}",
        )
    _log("info", "agent answered ADD", pod=str(pod), **_decision(reply.body))


def local_decision(settings: PluginConfig, pod: PodRef) -> tuple[bool, str] | None:
    """(enroll, reason) from the pod source when the agent is down; None when it cannot tell.

    Imported lazily: only this fallback reads the store."""
    if not settings.pod_source:
        return None
    from inmesh.cluster.enrollment import decide
    from inmesh.cluster.store import FileClusterStore
    from inmesh.errors import InmeshError

    try:
        view = FileClusterStore(settings.pod_source).view()
    except InmeshError as exc:
        _log("warning", "pod source unreadable", path=settings.pod_source, error=str(exc))
        return None
    meta = view.pod_by_name(pod.namespace, pod.name)
    if meta is None or (pod.uid and meta.uid != pod.uid):
        return None
    decision = decide(meta, view.namespace(meta.namespace), settings.exclude_namespaces)
    return decision.enroll, decision.reason


def _check(request: CniRequest, settings: PluginConfig, pod: PodRef, post: Transport) -> None:
    body = event_body(request, pod, with_ips=True)
    try:
        reply = post(settings.socket_path, PATH_CHECK, body, settings.agent_timeout_seconds)
    except AgentUnreachableError as exc:
        raise CniError(
            ERR_TRY_AGAIN_LATER,
            f"inmesh agent unreachable at {settings.socket_path} ({exc}); cannot check pod {pod}",
        ) from None
    if reply.status != 200:
        raise CniError(
            ERR_AGENT_REJECTED,
            f"inmesh agent reports pod {pod} is not as expected: HTTP {reply.status}: "
            f"{reply_excerpt(reply.body)}",
        )


def _delete(request: CniRequest, config: NetConf, post: Transport) -> None:
    try:
        settings = PluginConfig.from_netconf(config.raw)
    except CniError as err:
        _log("warning", "DEL with an invalid inmesh-cni entry; agent not told", error=err.msg)
        return
    pod = pod_of(request)
    if pod is None or skip_reason(pod, settings) is not None:
        return
    body = event_body(request, pod, with_ips=False)
    timeout = min(settings.agent_timeout_seconds, DEL_TIMEOUT_CAP_SECONDS)
    try:
        reply = post(settings.socket_path, PATH_DEL, body, timeout)
    except AgentUnreachableError as exc:
        _log("warning", "agent unreachable on DEL; it will reconcile", pod=str(pod), error=str(exc))
        return
    if reply.status != 200:
        _log("warning", "agent refused DEL", pod=str(pod), status=reply.status)


def _decision(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        return {"reply": reply_excerpt(body)}
    if not isinstance(answer, dict):
        return {"reply": reply_excerpt(body)}
    return {"enrolled": answer.get("enrolled"), "reason": answer.get("reason")}


def _log(level: str, msg: str, **fields: Any) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {"time": stamp, "level": level, "plugin": "inmesh-cni", "msg": msg, **fields}
    sys.stderr.write(json.dumps(record, default=str) + "\n")


def _emit(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _read_stdin() -> bytes:
    if sys.stdin is None:
        return b""
    try:
        return sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise CniError(ERR_IO, f"error reading from stdin: {exc}") from None


def main() -> int:
    """Entry point of the executable: exit status 0 on success, 1 with an error object on stdout."""
    version = requested_version(b"")
    try:
        stdin = _read_stdin()
        version = requested_version(stdin)
        output = run(parse_request(os.environ, stdin))
    except CniError as err:
        _log("error", err.msg, code=err.code, details=err.details, command=_command())
        _emit(err.to_json(version))
        return 1
    except Exception as exc:  # the protocol boundary: even a bug must answer with an error object
        _log("error", "internal error", error=repr(exc), command=_command())
        _emit(error_object(ERR_INTERNAL, f"inmesh-cni internal error: {exc!r}", "", version))
        return 1
    if output is not None:
        _emit(output)
    return 0


def _command() -> str:
    return os.environ.get("CNI_COMMAND", "")
