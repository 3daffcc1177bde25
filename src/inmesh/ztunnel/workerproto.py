"""The messages between ztunnel and its inbound workers, sans-io.

ztunnel hands the HBONE side (port 15008) of its pods to worker processes so that decryption
and encryption of one tunnel run on two cores (see `inmesh.ztunnel.offload`). Both ends are the
same program, started together, so the format is internal and unversioned: one JSON object per
message (a SOCK_SEQPACKET record), ``{"t": kind, ...}``, with file descriptors passed beside it
(SCM_RIGHTS) where a kind says so. Bytes travel base64-encoded.

ztunnel -> worker: ``hello`` (settings), ``pod`` (+ the pod's 15008 listener and netns fds),
``drain`` (a pod), ``xds`` (workload resources, as received from the control plane), ``cert``
and ``uncert`` (a local identity's certificate and key, or its removal), ``ping``, ``exit``.
worker -> ztunnel: ``ready``, ``traffic`` (metrics events), ``drained`` (a pod), ``pong``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

from inmesh.errors import RemoteProtocolError
from inmesh.hbone import HboneSettings
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.metrics import TrafficLabels
from inmesh.ztunnel.settings import ProxySettings

MAX_MESSAGE = 64 << 10
"""Largest record either side sends (bytes); bigger xDS updates are split."""

Message = dict[str, Any]


def encode(kind: str, **body: Any) -> bytes:
    data = json.dumps({"t": kind, **body}, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"{kind} message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> Message:
    """The message in ``data``; `RemoteProtocolError` if it is not one."""
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RemoteProtocolError(f"worker channel: not a JSON message: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise RemoteProtocolError("worker channel: a message must be an object with a kind")
    return message


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# -- bodies ------------------------------------------------------------------------------------


def hello(node: str, trust_domain: str, proxy: ProxySettings, hbone: HboneSettings,
          log_level: int) -> bytes:
    return encode("hello", node=node, trust_domain=trust_domain, proxy=asdict(proxy),
                  hbone=asdict(hbone), log_level=log_level)


def settings_of(message: Message) -> tuple[ProxySettings, HboneSettings]:
    return _dataclass(ProxySettings, message["proxy"]), _dataclass(HboneSettings, message["hbone"])


def _dataclass(cls: Any, values: Mapping[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def pod(uid: str, info: WorkloadInfo) -> bytes:
    """Goes with two fds: the pod's 15008 listener, then its netns."""
    return encode("pod", uid=uid, info=asdict(info))


def info_of(message: Message) -> WorkloadInfo:
    return WorkloadInfo(**message["info"])


def xds_batches(added: Mapping[str, bytes], removed: list[str]) -> list[bytes]:
    """One xDS update as records of at most `MAX_MESSAGE` bytes (all but the last carry no
    removals; applying them in order gives the same table)."""
    out: list[bytes] = []
    batch: dict[str, str] = {}
    size = 0
    for name, body in added.items():
        text = b64(body)
        if batch and size + len(name) + len(text) + 16 > MAX_MESSAGE // 2:
            out.append(encode("xds", added=batch, removed=[]))
            batch, size = {}, 0
        batch[name] = text
        size += len(name) + len(text) + 16
    out.append(encode("xds", added=batch, removed=removed))
    return out


def xds_of(message: Message) -> tuple[dict[str, bytes], list[str]]:
    return {k: unb64(v) for k, v in message["added"].items()}, list(message["removed"])


def cert(bundle: CertBundle) -> bytes:
    return encode("cert", identity=bundle.identity.uri, key=b64(bundle.key_pem),
                  chain=[b64(c) for c in bundle.chain_pem], roots=b64(bundle.roots_pem),
                  not_before=bundle.not_before.isoformat(),
                  not_after=bundle.not_after.isoformat())


def bundle_of(message: Message) -> CertBundle:
    return CertBundle(identity=SpiffeId.parse(message["identity"]), key_pem=unb64(message["key"]),
                      chain_pem=tuple(unb64(c) for c in message["chain"]),
                      roots_pem=unb64(message["roots"]),
                      not_before=datetime.fromisoformat(message["not_before"]),
                      not_after=datetime.fromisoformat(message["not_after"]))


def event(op: str, uid: str, labels: TrafficLabels, received: int = 0,
          sent: int = 0) -> dict[str, Any]:
    """One connection event (``opened``, ``closed``, ``failed``) of pod ``uid``."""
    return {"op": op, "uid": uid, "labels": asdict(labels), "received": received, "sent": sent}


def traffic(events: list[dict[str, Any]]) -> list[bytes]:
    """Events as few records as fit (a worker sends what one loop iteration produced)."""
    out: list[bytes] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for item in events:
        cost = 400 + sum(len(v) for v in item["labels"].values())
        if batch and size + cost > MAX_MESSAGE // 2:
            out.append(encode("traffic", events=batch))
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        out.append(encode("traffic", events=batch))
    return out


def labels_of(message: Message) -> TrafficLabels:
    return _dataclass(TrafficLabels, message["labels"])  # type: ignore[no-any-return]
