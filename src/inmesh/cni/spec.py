"""The CNI 1.x plugin protocol, sans-io: environment + stdin in, a `CniRequest` or a `CniError` out.

Follows the CNI spec (1.0.0, plus 1.1.0's GC/STATUS) and the reference skeleton (libcni `skel`):
which variables each command needs, which error code each failure gets, how results of one spec
version are re-encoded at another. `CniError` is the only exception that leaves `parse_request`.

Decisions where the spec leaves room:
- a config without ``cniVersion`` is read as 0.1.0, like libcni;
- ``CNI_ARGS`` is split on ``;`` then on the first ``=``; empty segments are skipped, unknown keys
  are kept (the spec's ``IgnoreUnknown`` only matters to plugins that reject unknown keys);
- results are converted between all supported versions, including the 0.1.0/0.2.0 ``ip4``/``ip6``
  shape (the conversion to 0.2.0 keeps the first address of each family, like libcni).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from inmesh.errors import InmeshError

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
"""What we answer in VERSION and error objects when the request names no usable version."""

MAX_CONFIG_BYTES = 4 << 20
"""Largest stdin we decode. A config with a prevResult is a few KiB; 4 MiB is far past any real
chain and still cheap to hold, so anything bigger is garbage, not a config."""

MAX_IFNAME_BYTES = 15
"""IFNAMSIZ - 1: the kernel's limit on interface names."""

ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_INTERNAL = 999

_VALID_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_LEGACY = frozenset({"0.1.0", "0.2.0"})
_VERSIONED_IPS = frozenset({"0.3.0", "0.3.1", "0.4.0"})


class Command(StrEnum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    VERSION = "VERSION"
    GC = "GC"
    STATUS = "STATUS"


_REQUIRED_ENV: Mapping[Command, tuple[str, ...]] = {
    Command.ADD: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    Command.CHECK: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    Command.DEL: ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    Command.VERSION: (),
    Command.GC: (),
    Command.STATUS: (),
}
_MIN_CONFIG_VERSION: Mapping[Command, str] = {
    Command.CHECK: "0.4.0",
    Command.GC: "1.1.0",
    Command.STATUS: "1.1.0",
}


class CniError(InmeshError):
    """A CNI protocol error: what goes on stdout as ``{"cniVersion", "code", "msg", "details"}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"[{code}] {msg}" + (f" ({details})" if details else ""))
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
        return error_object(self.code, self.msg, self.details, cni_version)


def error_object(
    code: int, msg: str, details: str = "", cni_version: str = CURRENT_VERSION
) -> dict[str, Any]:
    """The CNI error object (``details`` always present, possibly empty)."""
    return {"cniVersion": cni_version, "code": code, "msg": msg, "details": details}


@dataclass(frozen=True)
class NetConf:
    """The network config on stdin: standard keys, the whole object, and the chained prevResult."""

    cni_version: str
    name: str
    type: str
    raw: Mapping[str, Any] = field(repr=False)
    prev_result: Mapping[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CniRequest:
    """One plugin invocation. ``config`` is None only for VERSION."""

    command: Command
    cni_version: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    path: tuple[str, ...] = ()
    config: NetConf | None = None


@dataclass(frozen=True)
class K8sArgs:
    """The Kubernetes keys runtimes put in CNI_ARGS; any subset may be missing (None)."""

    pod_name: str | None
    pod_namespace: str | None
    pod_uid: str | None
    infra_container_id: str | None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> K8sArgs:
        def get(key: str) -> str | None:
            return args.get(key) or None

        return cls(
            get("K8S_POD_NAME"),
            get("K8S_POD_NAMESPACE"),
            get("K8S_POD_UID"),
            get("K8S_POD_INFRA_CONTAINER_ID"),
        )


def parse_request(environ: Mapping[str, str], stdin: bytes) -> CniRequest:
    """Validate the environment and decode stdin, in the order libcni's skel does."""
    command = _parse_command(environ.get("CNI_COMMAND", ""))
    if command is Command.VERSION:
        return CniRequest(command, requested_version(stdin))
    missing = [name for name in _REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    container_id = environ.get("CNI_CONTAINERID", "")
    ifname = environ.get("CNI_IFNAME", "")
    if container_id:
        validate_container_id(container_id)
    if ifname or "CNI_IFNAME" in _REQUIRED_ENV[command]:
        validate_ifname(ifname)
    config = parse_netconf(stdin)
    minimum = _MIN_CONFIG_VERSION.get(command)
    if minimum and version_tuple(config.cni_version) < version_tuple(minimum):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"config version {config.cni_version} does not allow {command.value}",
        )
    return CniRequest(
        command=command,
        cni_version=config.cni_version,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=MappingProxyType(parse_cni_args(environ.get("CNI_ARGS", ""))),
        path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
        config=config,
    )


def _parse_command(value: str) -> Command:
    if not value:
        raise CniError(ERR_INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    try:
        return Command(value)
    except ValueError:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {value!r}") from None


def validate_container_id(container_id: str) -> None:
    if not _VALID_NAME.fullmatch(container_id):
        raise CniError(ERR_INVALID_ENV, "invalid characters in containerID", container_id)


def validate_network_name(name: str) -> None:
    if not name:
        raise CniError(ERR_INVALID_CONFIG, "missing network name")
    if not _VALID_NAME.fullmatch(name):
        raise CniError(ERR_INVALID_CONFIG, "invalid characters found in network name", name)


def validate_ifname(ifname: str) -> None:
    """The kernel's rules for an interface name (libcni ValidateInterfaceName)."""
    if not ifname:
        raise CniError(ERR_INVALID_ENV, "interface name is empty")
    try:
        size = len(ifname.encode("utf-8", "surrogateescape"))  # os.environ's own encoding
    except UnicodeEncodeError:
        raise CniError(ERR_INVALID_ENV, "interface name is not valid text", repr(ifname)) from None
    if size > MAX_IFNAME_BYTES:
        raise CniError(ERR_INVALID_ENV, "interface name is too long", ifname)
    if ifname in (".", ".."):
        raise CniError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in ifname):
        raise CniError(ERR_INVALID_ENV, "interface name contains / or : or whitespace", ifname)


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K=V`` into a dict (the value may contain ``=``; later keys win)."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r}")
        out[key] = value
    return out


def format_cni_args(args: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in args.items())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Decode strict JSON (no NaN/Infinity) that must be an object; failures are code 6."""
    if len(data) > MAX_CONFIG_BYTES:
        raise CniError(ERR_DECODE, f"{what} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CniError(ERR_DECODE, f"cannot decode {what}: {exc}") from None
    if not isinstance(obj, dict):
        raise CniError(ERR_DECODE, f"{what} is not a JSON object")
    return obj


def parse_netconf(stdin: bytes) -> NetConf:
    obj = decode_json_object(stdin, "network config")
    version = _string_field(obj, "cniVersion") or "0.1.0"
    check_version(version)
    name = _string_field(obj, "name")
    validate_network_name(name)
    prev = obj.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_DECODE, "prevResult is not a JSON object")
    return NetConf(version, name, _string_field(obj, "type"), MappingProxyType(obj), prev)


def _string_field(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise CniError(ERR_DECODE, f"network config field {key!r} must be a string")
    return value


def check_version(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )


def version_tuple(version: str) -> tuple[int, ...]:
    """Numeric form of a supported version string (for ordering)."""
    return tuple(int(part) for part in version.split("."))


def requested_version(stdin: bytes) -> str:
    """The version a VERSION request asked in (if we know it), else ours. Never raises."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, RecursionError, AttributeError):
        return CURRENT_VERSION
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


def version_reply(cni_version: str) -> dict[str, Any]:
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- results -------------------------------------------------------------------------------


def convert_result(result: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    """Re-encode a result at ``to_version``; a result without a known cniVersion is taken as
    already being at ``to_version`` (libcni parses prevResult at the config's version)."""
    declared = result.get("cniVersion")
    from_version = declared if declared in SUPPORTED_VERSIONS else to_version
    legacy_in, legacy_out = from_version in _LEGACY, to_version in _LEGACY
    if legacy_in and legacy_out:
        return {**result, "cniVersion": to_version}
    if legacy_in:
        return _from_legacy(result, to_version)
    ips = _result_ips(result)
    if legacy_out:
        return _to_legacy(result, ips, to_version)
    out = {**result, "cniVersion": to_version}
    if "ips" in result:
        out["ips"] = [_ip_at_version(ip, to_version) for ip in ips]
    return out


def _result_ips(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    ips = result.get("ips", [])
    if not isinstance(ips, list) or not all(isinstance(ip, dict) for ip in ips):
        raise CniError(ERR_INVALID_CONFIG, "invalid prevResult: ips must be a list of objects")
    for ip in ips:
        parse_cidr(ip.get("address"), "prevResult.ips[].address")
    return ips


def _ip_at_version(ip: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    rest = {k: v for k, v in ip.items() if k != "version"}
    if to_version not in _VERSIONED_IPS:
        return rest
    family = "6" if ":" in ip["address"] else "4"
    return {"version": family, **rest}


def _from_legacy(result: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    ips: list[dict[str, Any]] = []
    routes: list[Any] = []
    for key in ("ip4", "ip6"):
        block = result.get(key)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise CniError(ERR_INVALID_CONFIG, f"invalid prevResult: {key} must be an object")
        parse_cidr(block.get("ip"), f"prevResult.{key}.ip")
        entry = {"address": block["ip"]}
        if block.get("gateway"):
            entry["gateway"] = block["gateway"]
        ips.append(_ip_at_version(entry, to_version))
        block_routes = block.get("routes", [])
        routes.extend(block_routes if isinstance(block_routes, list) else [])
    out: dict[str, Any] = {"cniVersion": to_version, "ips": ips}
    if routes:
        out["routes"] = routes
    if "dns" in result:
        out["dns"] = result["dns"]
    return out


def _to_legacy(
    result: Mapping[str, Any], ips: list[dict[str, Any]], to_version: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": to_version}
    raw_routes = result.get("routes")
    routes = [r for r in raw_routes if isinstance(r, dict)] if isinstance(raw_routes, list) else []
    for key, is_v6 in (("ip4", False), ("ip6", True)):
        first = next((ip for ip in ips if (":" in ip["address"]) == is_v6), None)
        if first is None:
            continue
        block: dict[str, Any] = {"ip": first["address"]}
        if first.get("gateway"):
            block["gateway"] = first["gateway"]
        fam_routes = [r for r in routes if (":" in str(r.get("dst", ""))) == is_v6]
        if fam_routes:
            block["routes"] = fam_routes
        out[key] = block
    if "dns" in result:
        out["dns"] = result["dns"]
    return out


def parse_cidr(value: Any, what: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address in CIDR form (``10.1.2.3/24``); anything else is an invalid config (code 7)."""
    if not isinstance(value, str) or "/" not in value:
        raise CniError(ERR_INVALID_CONFIG, f"invalid {what}: expected CIDR, got {value!r}")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise CniError(ERR_INVALID_CONFIG, f"invalid {what}: {value!r}") from None
