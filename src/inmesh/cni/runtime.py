"""A CNI runtime driver: runs a node's primary chain for one sandbox, as containerd does via libcni.

ADD runs each plugin in order, feeding each the previous result, and caches the final result under
``<cache_dir>/results/<network>-<container>-<ifname>`` (libcni's layout). If a plugin fails, DEL
runs for it and every plugin before it, in reverse, so a failed ADD leaves nothing behind (the
teardown containerd does after a failed sandbox setup). DEL runs in reverse with the cached result;
it is idempotent and works with an empty netns (the runtime's second DEL). CHECK replays the cached
result through the chain. Plugins run as ``[*exec_prefix, plugin]`` (e.g. nsenter into a node's
netns), with the calling process's environment plus the CNI variables.

Decisions: the config is read at call time (containerd's behaviour); DEL falls back to the config
cached at ADD when the conf dir has none any more; ``IgnoreUnknown=1`` is prepended to CNI_ARGS
unless the caller set it (containerd always sends it, and libcni plugins reject unknown keys
without it); ``capabilities``/``runtimeConfig`` are not supported.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inmesh.cni import spec
from inmesh.cni._files import atomic_write, find_primary_config, read_file, remove_file
from inmesh.cni.conflist import as_list, parse_config_file, plugin_invocation_config, render
from inmesh.errors import ConfigError, InmeshError, NotFoundError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 60.0
"""Per plugin execution. containerd bounds the whole sandbox setup by the CRI call's deadline
(minutes); a minute per plugin is long enough for an agent that waits on ztunnel, short enough
that a wedged plugin does not hang the lab."""
STDERR_EXCERPT_MAX_CHARS = 4096
"""How much of a failing plugin's stderr goes into the error's details."""
CACHE_KIND = "cniCacheV1"


@dataclass(frozen=True)
class CniInvocation:
    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Mapping[str, str] = field(default_factory=dict)
    """CNI_ARGS pairs, e.g. ``{"K8S_POD_NAME": ..., "K8S_POD_NAMESPACE": ...}``."""


class CniPluginError(InmeshError):
    """A plugin of the chain failed; code/msg/details are its CNI error object (999: none)."""

    def __init__(self, plugin: str, code: int, msg: str, details: str = "") -> None:
        text = f"CNI plugin {plugin} failed with code {code}: {msg}"
        super().__init__(text + (f" ({details})" if details else ""))
        self.plugin = plugin
        self.code = code
        self.msg = msg
        self.details = details


@dataclass(frozen=True)
class _Chain:
    name: str
    version: str
    obj: Mapping[str, Any]

    @property
    def plugin_types(self) -> list[str]:
        return [str(p.get("type", "")) for p in self.obj["plugins"]]


@dataclass(frozen=True)
class _Cached:
    chain: _Chain
    result: Mapping[str, Any]


class CniRuntime:
    def __init__(
        self,
        conf_dir: str,
        bin_dirs: Sequence[str],
        cache_dir: str,
        *,
        exec_prefix: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = tuple(bin_dirs)
        self.cache_dir = cache_dir
        self.exec_prefix = tuple(exec_prefix)
        self.timeout = timeout

    # --- the three operations --------------------------------------------------------------

    def add(self, inv: CniInvocation) -> dict[str, Any]:
        """ADD through the chain; returns (and caches) the final result."""
        _validate(inv)
        chain = self._current_chain()
        if chain is None:
            raise ConfigError(f"no CNI config in {self.conf_dir}")
        binaries = [self._find_binary(t) for t in chain.plugin_types]
        prev: dict[str, Any] | None = None
        for index, binary in enumerate(binaries):
            try:
                prev = self._exec("ADD", chain, index, binary, inv, prev)
            except CniPluginError:
                self._roll_back(chain, binaries[: index + 1], inv, prev)
                raise
        result = prev if prev is not None else {"cniVersion": chain.version}
        self._write_cache(chain, inv, result)
        return result

    def delete(self, inv: CniInvocation) -> None:
        """DEL through the chain in reverse; a no-op when there is neither config nor cache."""
        _validate(inv)
        chain = self._current_chain()
        cached = self._read_cache(inv, chain.name if chain else None)
        if chain is None:
            if cached is None:
                log.info("DEL %s: no CNI config and no cached ADD; nothing to do", inv.container_id)
                return
            chain = cached.chain
        prev = cached.result if cached and cached.chain.name == chain.name else None
        binaries = [self._find_binary(t) for t in chain.plugin_types]
        for index in reversed(range(len(binaries))):
            self._exec("DEL", chain, index, binaries[index], inv, prev)
        remove_file(self._cache_path(chain.name, inv))

    def check(self, inv: CniInvocation) -> None:
        """CHECK through the chain with the cached ADD result (spec 0.4.0 and later)."""
        _validate(inv)
        chain = self._current_chain()
        if chain is None:
            raise ConfigError(f"no CNI config in {self.conf_dir}")
        if spec.version_tuple(chain.version) < spec.version_tuple("0.4.0"):
            raise ConfigError(f"CNI config {chain.name} is version {chain.version}: no CHECK")
        if chain.obj.get("disableCheck") is True:
            return
        cached = self._read_cache(inv, chain.name)
        if cached is None:
            raise NotFoundError(
                f"no cached ADD result for container {inv.container_id} on {chain.name}"
            )
        binaries = [self._find_binary(t) for t in chain.plugin_types]
        for index, binary in enumerate(binaries):
            self._exec("CHECK", chain, index, binary, inv, cached.result)

    # --- running plugins -------------------------------------------------------------------

    def _roll_back(
        self,
        chain: _Chain,
        binaries: list[str],
        inv: CniInvocation,
        prev: Mapping[str, Any] | None,
    ) -> None:
        for index in reversed(range(len(binaries))):
            try:
                self._exec("DEL", chain, index, binaries[index], inv, prev)
            except CniPluginError as err:
                log.warning("rollback after failed ADD of %s: %s", inv.container_id, err)

    def _exec(
        self,
        command: str,
        chain: _Chain,
        index: int,
        binary: str,
        inv: CniInvocation,
        prev: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        plugin = chain.plugin_types[index]
        stdin = json.dumps(plugin_invocation_config(chain.obj, index, prev)).encode()
        try:
            proc = subprocess.run(
                [*self.exec_prefix, binary],
                input=stdin,
                capture_output=True,
                env=self._environ(command, inv),
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CniPluginError(
                plugin, spec.ERR_INTERNAL, f"{command} timed out after {self.timeout:g}s"
            ) from None
        except OSError as exc:
            raise CniPluginError(plugin, spec.ERR_INTERNAL, f"cannot run {binary}: {exc}") from exc
        if proc.returncode != 0:
            raise _plugin_error(plugin, command, proc)
        if proc.stderr:
            log.debug("%s %s stderr: %s", plugin, command, proc.stderr.decode(errors="replace"))
        return _plugin_result(plugin, chain, proc) if command == "ADD" else None

    def _environ(self, command: str, inv: CniInvocation) -> dict[str, str]:
        args = dict(inv.args)
        if "IgnoreUnknown" not in args:
            args = {"IgnoreUnknown": "1", **args}
        return {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": inv.container_id,
            "CNI_NETNS": inv.netns,
            "CNI_IFNAME": inv.ifname,
            "CNI_ARGS": spec.format_cni_args(args),
            "CNI_PATH": ":".join(self.bin_dirs),
        }

    def _find_binary(self, plugin_type: str) -> str:
        if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
            raise ConfigError(f"invalid CNI plugin type {plugin_type!r} in {self.conf_dir}")
        for directory in self.bin_dirs:
            path = os.path.join(directory, plugin_type)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise ConfigError(f"CNI plugin {plugin_type} not found in {list(self.bin_dirs)}")

    # --- config and cache ------------------------------------------------------------------

    def _current_chain(self) -> _Chain | None:
        name = find_primary_config(self.conf_dir)
        if name is None:
            return None
        data, _ = read_file(os.path.join(self.conf_dir, name))
        return _chain_of(as_list(parse_config_file(name, data)), f"{self.conf_dir}/{name}")

    def _cache_path(self, network: str, inv: CniInvocation) -> str:
        return os.path.join(self.cache_dir, "results", f"{network}-{inv.container_id}-{inv.ifname}")

    def _write_cache(self, chain: _Chain, inv: CniInvocation, result: Mapping[str, Any]) -> None:
        entry = {
            "kind": CACHE_KIND,
            "containerId": inv.container_id,
            "config": base64.b64encode(render(chain.obj)).decode(),
            "ifName": inv.ifname,
            "networkName": chain.name,
            "netns": inv.netns,
            "cniArgs": [[k, v] for k, v in inv.args.items()],
            "result": dict(result),
        }
        path = self._cache_path(chain.name, inv)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write(path, render(entry))

    def _read_cache(self, inv: CniInvocation, network: str | None) -> _Cached | None:
        for path in self._cache_candidates(inv, network):
            try:
                entry = json.loads(read_file(path)[0])
                chain = _chain_of(json.loads(base64.b64decode(entry["config"])), path)
                result = entry["result"]
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                log.warning("ignoring unreadable CNI cache %s: %r", path, exc)
                continue
            if entry.get("containerId") == inv.container_id and isinstance(result, dict):
                return _Cached(chain, result)
        return None

    def _cache_candidates(self, inv: CniInvocation, network: str | None) -> list[str]:
        if network is not None:
            return [self._cache_path(network, inv)]
        directory = os.path.join(self.cache_dir, "results")
        suffix = f"-{inv.container_id}-{inv.ifname}"
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(suffix))
        except FileNotFoundError:
            return []
        return [os.path.join(directory, n) for n in names]


def _validate(inv: CniInvocation) -> None:
    try:
        spec.validate_container_id(inv.container_id)
        spec.validate_ifname(inv.ifname)
    except spec.CniError as err:
        raise ConfigError(f"invalid CNI invocation {inv}: {err}") from None


def _chain_of(obj: Mapping[str, Any], where: str) -> _Chain:
    version = obj.get("cniVersion") or "0.1.0"
    name = obj.get("name")
    plugins = obj.get("plugins")
    if version not in spec.SUPPORTED_VERSIONS:
        raise ConfigError(f"CNI config {where}: unsupported cniVersion {version!r}")
    if not isinstance(name, str):
        raise ConfigError(f"CNI config {where} has no network name")
    try:
        spec.validate_network_name(name)
    except spec.CniError as err:
        raise ConfigError(f"CNI config {where}: {err}") from None
    if not isinstance(plugins, list) or not plugins:
        raise ConfigError(f"CNI config {where} has no plugins")
    return _Chain(name, version, obj)


def _plugin_error(plugin: str, command: str, proc: subprocess.CompletedProcess[bytes]) -> Exception:
    stderr = proc.stderr.decode(errors="replace").strip()[-STDERR_EXCERPT_MAX_CHARS:]
    try:
        obj = spec.decode_json_object(proc.stdout, "error")
        code, msg = obj["code"], obj["msg"]
        if not isinstance(code, int) or not isinstance(msg, str):
            raise TypeError("code must be an int and msg a string")
    except (spec.CniError, KeyError, TypeError):
        return CniPluginError(
            plugin,
            spec.ERR_INTERNAL,
            f"{command} exited with status {proc.returncode} and no CNI error object",
            stderr,
        )
    return CniPluginError(plugin, code, msg, str(obj.get("details") or ""))


def _plugin_result(
    plugin: str, chain: _Chain, proc: subprocess.CompletedProcess[bytes]
) -> dict[str, Any]:
    try:
        result = spec.decode_json_object(proc.stdout, "ADD result")
        return spec.convert_result(result, chain.version)
    except spec.CniError as err:
        raise CniPluginError(plugin, err.code, f"ADD printed no valid result: {err.msg}") from None
