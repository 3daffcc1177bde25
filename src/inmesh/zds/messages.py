"""ZDS messages as frozen dataclasses, and their byte encodings (sans-io).

Each ZDS record is exactly one protobuf message (zds.proto, wire-compatible with Istio's), at most
`MAX_RECORD` bytes. Decoders accept any bytes and raise only `ZdsDecodeError`; encoders refuse
(`LocalProtocolError`) anything the peer could not receive in one record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, EncodeError

from inmesh.errors import LocalProtocolError, RemoteProtocolError
from inmesh.zds import zds_pb2

_M = TypeVar("_M", zds_pb2.WorkloadRequest, zds_pb2.ZdsHello, zds_pb2.WorkloadResponse)

MAX_RECORD = 1024
"""Largest ZDS record in bytes: both Istio peers receive into a 1024-byte buffer (reference 5.1)."""

VERSION_V1 = 1
"""`Version.V1`, the only protocol version; ztunnel announces it in its Hello."""


class ZdsDecodeError(RemoteProtocolError):
    """The peer sent a record that is not a valid ZDS message of the expected kind."""


@dataclass(frozen=True)
class WorkloadInfo:
    """Who the pod is, as ztunnel looks it up in xDS (name, namespace and service account)."""

    name: str
    namespace: str
    service_account: str


@dataclass(frozen=True)
class AddWorkload:
    """Start the proxy of pod `uid` (travels with the pod's netns fd). `info` is None only when a
    peer omitted it, which the ztunnel side treats as a protocol error."""

    uid: str
    info: WorkloadInfo | None


@dataclass(frozen=True)
class KeepWorkload:
    """Keep pod `uid` although the agent has no netns for it (snapshot only)."""

    uid: str


@dataclass(frozen=True)
class DelWorkload:
    """Drain the proxy of pod `uid`."""

    uid: str


@dataclass(frozen=True)
class SnapshotSent:
    """The snapshot is complete: drain every proxy not named since the connection began."""


WorkloadRequest = AddWorkload | KeepWorkload | DelWorkload | SnapshotSent
"""What the agent sends to ztunnel."""


@dataclass(frozen=True)
class Hello:
    """ztunnel's first record on a connection."""

    version: int


@dataclass(frozen=True)
class Ack:
    """ztunnel's reply to every request: empty `error` = success, otherwise the NACK text."""

    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def encode_request(request: WorkloadRequest) -> bytes:
    msg = zds_pb2.WorkloadRequest()
    try:
        match request:
            case AddWorkload(uid=uid, info=info):
                msg.add.SetInParent()
                msg.add.uid = uid
                if info is not None:
                    msg.add.workload_info.SetInParent()
                    msg.add.workload_info.name = info.name
                    msg.add.workload_info.namespace = info.namespace
                    msg.add.workload_info.service_account = info.service_account
            case KeepWorkload(uid=uid):
                msg.keep.SetInParent()
                msg.keep.uid = uid
            case DelWorkload(uid=uid):
                del_ = getattr(msg, "del")  # "del" is a Python keyword
                del_.SetInParent()
                del_.uid = uid
            case SnapshotSent():
                msg.snapshot_sent.SetInParent()
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode ZDS request {_short(request)}: {exc}") from exc
    return _serialize(msg, request)


def decode_request(data: bytes) -> WorkloadRequest:
    msg = _parse(zds_pb2.WorkloadRequest(), data, "WorkloadRequest")
    kind = msg.WhichOneof("payload")
    if kind == "add":
        info = None
        if msg.add.HasField("workload_info"):
            wi = msg.add.workload_info
            info = WorkloadInfo(wi.name, wi.namespace, wi.service_account)
        return AddWorkload(msg.add.uid, info)
    if kind == "keep":
        return KeepWorkload(msg.keep.uid)
    if kind == "del":
        return DelWorkload(getattr(msg, "del").uid)
    if kind == "snapshot_sent":
        return SnapshotSent()
    raise ZdsDecodeError(f"ZDS WorkloadRequest without a known payload: {data.hex(' ')}")


def encode_hello(hello: Hello) -> bytes:
    msg = zds_pb2.ZdsHello()
    try:
        msg.version = hello.version  # type: ignore[assignment]  # open enum: any int32
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode ZDS hello {_short(hello)}: {exc}") from exc
    return _serialize(msg, hello)


def decode_hello(data: bytes) -> Hello:
    """Decode ztunnel's Hello. The version is not checked (Istio's agent only logs it)."""
    return Hello(int(_parse(zds_pb2.ZdsHello(), data, "ZdsHello").version))


def encode_ack(ack: Ack) -> bytes:
    msg = zds_pb2.WorkloadResponse()
    try:
        msg.ack.SetInParent()
        msg.ack.error = ack.error
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode ZDS ack {_short(ack)}: {exc}") from exc
    return _serialize(msg, ack)


def decode_ack(data: bytes) -> Ack:
    msg = _parse(zds_pb2.WorkloadResponse(), data, "WorkloadResponse")
    if msg.WhichOneof("payload") != "ack":
        raise ZdsDecodeError(f"ZDS WorkloadResponse without an ack: {data.hex(' ')}")
    return Ack(msg.ack.error)


def nack_text(text: str) -> str:
    """Shorten a NACK text so that the Ack carrying it fits in one record."""
    limit = MAX_RECORD - 8  # tag + length of WorkloadResponse.ack and of Ack.error
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def _serialize(
    msg: zds_pb2.WorkloadRequest | zds_pb2.ZdsHello | zds_pb2.WorkloadResponse, what: object
) -> bytes:
    try:
        data = msg.SerializeToString()
    except EncodeError as exc:
        raise LocalProtocolError(f"cannot encode ZDS message {_short(what)}: {exc}") from exc
    if len(data) > MAX_RECORD:
        raise LocalProtocolError(
            f"ZDS message {_short(what)} encodes to {len(data)} bytes, more than the "
            f"{MAX_RECORD}-byte record limit of the peer"
        )
    return data


def _parse(msg: _M, data: bytes, kind: str) -> _M:
    if len(data) > MAX_RECORD:
        raise ZdsDecodeError(f"ZDS {kind} record of {len(data)} bytes exceeds {MAX_RECORD} bytes")
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise ZdsDecodeError(f"undecodable ZDS {kind} record {data[:64].hex(' ')}: {exc}") from exc
    return msg


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
