"""CNI config files as values, sans-io: pick the primary file, chain our entry last, take it out.

The primary config is the first ``*.conf``, ``*.conflist`` or ``*.json`` file in lexical order
(libcni ``ConfFiles``, as kubelet and containerd pick it). A single-plugin config (top-level
``type``) becomes a list on insertion: the list keeps its name and cniVersion, the old plugin
loses its cniVersion (the list supplies it), ours is appended. Rendering is deterministic, so
inserting into our own output gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from inmesh.cni.event import PLUGIN_TYPE
from inmesh.errors import ConfigError

CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")


class ConfigKind(Enum):
    SINGLE = "single"
    """One plugin: the object itself has ``type`` (a ``.conf`` file)."""
    LIST = "list"
    """A chain: the object has ``plugins`` (a ``.conflist`` file)."""


@dataclass(frozen=True)
class ConfigFile:
    name: str
    kind: ConfigKind
    obj: Mapping[str, Any]


def is_config_name(name: str) -> bool:
    return name.endswith(CONFIG_EXTENSIONS)


def pick_primary(names: Iterable[str]) -> str | None:
    """The file a runtime would use: the lexically first name with a config extension."""
    return min((n for n in names if is_config_name(n)), default=None)


def parse_config_file(name: str, data: bytes) -> ConfigFile:
    """Classify a config file by content; anything a runtime would refuse is a ConfigError."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"CNI config {name} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"CNI config {name} is not a JSON object")
    if "plugins" in obj or name.endswith(".conflist"):
        plugins = obj.get("plugins")
        if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
            raise ConfigError(f"CNI config list {name} has no valid 'plugins' list")
        if not plugins:
            raise ConfigError(f"CNI config list {name} has no plugins")
        return ConfigFile(name, ConfigKind.LIST, obj)
    if not isinstance(obj.get("type"), str) or not obj["type"]:
        raise ConfigError(f"CNI config {name} has neither 'plugins' nor a plugin 'type'")
    return ConfigFile(name, ConfigKind.SINGLE, obj)


def as_list(config: ConfigFile) -> dict[str, Any]:
    """The chain a runtime runs for this file (libcni ``ConfListFromConf`` for a single plugin)."""
    if config.kind is ConfigKind.LIST:
        return dict(config.obj)
    out: dict[str, Any] = {}
    if "cniVersion" in config.obj:
        out["cniVersion"] = config.obj["cniVersion"]
    out["name"] = config.obj.get("name", "")
    out["plugins"] = [dict(config.obj)]
    return out


def list_name(config: ConfigFile) -> str:
    """File name once our entry is in: a single ``x.conf`` becomes ``x.conflist``."""
    if config.kind is ConfigKind.LIST:
        return config.name
    return config.name.rsplit(".", 1)[0] + ".conflist"


def with_plugin(config: ConfigFile, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The chain with ``entry`` last and no other entry of our type."""
    if config.kind is ConfigKind.SINGLE:
        single = {k: v for k, v in config.obj.items() if k != "cniVersion"}
        base = {**as_list(config), "plugins": [single]}
    else:
        base = dict(config.obj)
    plugins = [p for p in base["plugins"] if not is_ours(p)]
    return {**base, "plugins": [*plugins, dict(entry)]}


def without_plugin(conflist: Mapping[str, Any]) -> dict[str, Any]:
    return {**conflist, "plugins": [p for p in conflist["plugins"] if not is_ours(p)]}


def has_plugin(config: ConfigFile) -> bool:
    return config.kind is ConfigKind.LIST and any(is_ours(p) for p in config.obj["plugins"])


def is_ours(plugin: Mapping[str, Any]) -> bool:
    return plugin.get("type") == PLUGIN_TYPE


def render(obj: Mapping[str, Any]) -> bytes:
    """Deterministic file content: 2-space indent, key order kept, trailing newline."""
    return (json.dumps(obj, indent=2) + "\n").encode()


def plugin_invocation_config(
    conflist: Mapping[str, Any], index: int, prev_result: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What plugin ``index`` of a chain gets on stdin: its entry plus the list's name and
    cniVersion, and the previous result when there is one (CNI spec, "Network configuration
    lists")."""
    plugin = dict(conflist["plugins"][index])
    plugin["name"] = conflist.get("name", "")
    if "cniVersion" in conflist:
        plugin["cniVersion"] = conflist["cniVersion"]
    else:
        plugin.pop("cniVersion", None)
    if prev_result is not None:
        plugin["prevResult"] = dict(prev_result)
    else:
        plugin.pop("prevResult", None)
    return plugin
