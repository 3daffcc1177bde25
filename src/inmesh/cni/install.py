"""Install ``inmesh-cni`` on a node and take it away again, leaving no trace.

``install`` copies the executable into the CNI bin dir and chains our entry last into the primary
config; ``uninstall`` reverses both. Every file is replaced atomically (temp file, fsync, rename,
fsync of the directory), so a runtime reading the conf dir sees the old config or the new one.

To reverse exactly, install keeps a record next to the configs (``.inmesh-cni.install-record``,
an extension no runtime loads): the primary file's original bytes and mode, and a digest of what
we wrote. If the file still holds our bytes at uninstall, the original comes back byte-for-byte
(a wrapped ``x.conf`` returns and ``x.conflist`` goes); if someone rewrote it since, only our entry
is taken out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from inmesh.cni._files import atomic_write, find_primary_config, fsync_dir, read_file, remove_file
from inmesh.cni.conflist import (
    ConfigFile,
    ConfigKind,
    has_plugin,
    list_name,
    parse_config_file,
    render,
    with_plugin,
    without_plugin,
)
from inmesh.cni.event import DEFAULT_AGENT_TIMEOUT_SECONDS, PLUGIN_TYPE, plugin_entry
from inmesh.errors import ConfigError

BINARY_NAME = PLUGIN_TYPE
RECORD_NAME = ".inmesh-cni.install-record"
BINARY_MODE = 0o755
RECORD_MODE = 0o600
WAIT_POLL_SECONDS = 0.2
"""How often ``wait_for_primary_config`` looks again: the primary CNI's installer writes its
config once, so a fifth of a second of extra latency is the whole cost."""


@dataclass(frozen=True)
class InstallResult:
    conf_path: str
    """The chain file that now ends with our entry."""
    binary_path: str
    wrapped_from: str | None
    """The single-plugin ``.conf`` our ``.conflist`` replaced, if any."""
    changed: bool
    """False when everything was already in place (a second install is a no-op)."""


def default_plugin_source() -> str:
    """The ``inmesh-cni`` console script of this installation (its shebang names our python)."""
    return os.path.join(os.path.dirname(sys.executable), BINARY_NAME)


def install(
    conf_dir: str,
    bin_dir: str,
    agent_run_dir: str,
    exclude_namespaces: Iterable[str] = (),
    *,
    agent_timeout_seconds: float = DEFAULT_AGENT_TIMEOUT_SECONDS,
    plugin_source: str | None = None,
    pod_source: str = "",
) -> InstallResult:
    """Copy the plugin into ``bin_dir``; chain it last into the primary config of ``conf_dir``."""
    source = plugin_source or default_plugin_source()
    if not os.path.isfile(source):
        raise ConfigError(f"inmesh-cni executable not found at {source}")
    primary = _require_primary(conf_dir)
    data, st = read_file(os.path.join(conf_dir, primary))
    config = parse_config_file(primary, data)
    entry = plugin_entry(
        agent_run_dir, tuple(exclude_namespaces), agent_timeout_seconds, pod_source
    )
    target = list_name(config)
    content = render(with_plugin(config, entry))
    record = _load_record(conf_dir)
    original = _original_to_keep(config, data, st, record)
    if target != primary:
        _refuse_foreign_target(conf_dir, target, record)
    # Order: the binary before the config names it, the record before the config it describes.
    binary = os.path.join(bin_dir, BINARY_NAME)
    changed = _copy_executable(source, binary)
    new_record = {"conf": target, "written_sha256": _sha(content), "original": original}
    changed |= _write_if_different(os.path.join(conf_dir, RECORD_NAME), render(new_record))
    if target != primary or content != data:
        atomic_write(os.path.join(conf_dir, target), content, st)
        if target != primary:
            os.unlink(os.path.join(conf_dir, primary))
            fsync_dir(conf_dir)
        changed = True
    _require_still_primary(conf_dir, target)
    wrapped_from = original["name"] if original and original["name"] != target else None
    return InstallResult(os.path.join(conf_dir, target), binary, wrapped_from, changed)


def uninstall(conf_dir: str, bin_dir: str) -> None:
    """Undo ``install``: our entry out (or the original file back), our executable gone."""
    record = _load_record(conf_dir)
    if os.path.isdir(conf_dir):
        _unchain(conf_dir, record)
    remove_file(os.path.join(bin_dir, BINARY_NAME))
    remove_file(os.path.join(conf_dir, RECORD_NAME))


def wait_for_primary_config(
    conf_dir: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until the primary CNI has written its config; ConfigError after ``timeout`` s."""
    deadline = clock() + timeout
    while True:
        name = find_primary_config(conf_dir)
        if name is not None:
            return name
        if clock() >= deadline:
            raise _no_primary(conf_dir, f" after waiting {timeout:g}s")
        sleep(WAIT_POLL_SECONDS)


# --- the config file ---------------------------------------------------------------------------


def _require_primary(conf_dir: str) -> str:
    if not os.path.isdir(conf_dir):
        raise ConfigError(f"CNI conf dir {conf_dir} does not exist")
    name = find_primary_config(conf_dir)
    if name is None:
        raise _no_primary(conf_dir, "")
    return name


def _no_primary(conf_dir: str, suffix: str) -> ConfigError:
    return ConfigError(
        f"no primary CNI config (*.conf, *.conflist, *.json) in {conf_dir}{suffix}: "
        "install the node's primary CNI first (or pass --wait SECONDS)"
    )


def _original_to_keep(
    config: ConfigFile, data: bytes, st: os.stat_result, record: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """What uninstall should put back: the file as it was before any inmesh entry."""
    if not has_plugin(config):
        mode = stat.S_IMODE(st.st_mode)
        return {"name": config.name, "mode": mode, "content": base64.b64encode(data).decode()}
    if record and record.get("conf") == config.name and record.get("written_sha256") == _sha(data):
        original = record.get("original")
        return dict(original) if isinstance(original, dict) else None
    return None


def _refuse_foreign_target(conf_dir: str, target: str, record: Mapping[str, Any] | None) -> None:
    """Wrapping x.conf must not clobber an x.conflist that is not our own earlier output."""
    path = os.path.join(conf_dir, target)
    if not os.path.exists(path):
        return
    if (
        record is None
        or record.get("conf") != target
        or record.get("written_sha256") != _sha(read_file(path)[0])
    ):
        raise ConfigError(f"cannot turn the primary config into {path}: that file already exists")


def _require_still_primary(conf_dir: str, target: str) -> None:
    first = find_primary_config(conf_dir)
    if first != target:
        raise ConfigError(
            f"{first} sorts before {target} in {conf_dir}: runtimes would not run inmesh-cni"
        )


def _unchain(conf_dir: str, record: Mapping[str, Any] | None) -> None:
    name = record.get("conf") if record else None
    if not isinstance(name, str) or not os.path.isfile(os.path.join(conf_dir, name)):
        name = find_primary_config(conf_dir)
    if name is None:
        return
    path = os.path.join(conf_dir, name)
    data, st = read_file(path)
    original = record.get("original") if record else None
    untouched = record and record.get("conf") == name and record.get("written_sha256") == _sha(data)
    if untouched and isinstance(original, dict):
        _restore(conf_dir, name, original, st)
        return
    try:
        config = parse_config_file(name, data)
    except ConfigError:
        return  # not a config we could have written: nothing of ours to take out
    if config.kind is ConfigKind.LIST and has_plugin(config):
        atomic_write(path, render(without_plugin(config.obj)), st)


def _restore(conf_dir: str, current: str, original: Mapping[str, Any], st: os.stat_result) -> None:
    try:
        content = base64.b64decode(str(original["content"]), validate=True)
        name, mode = str(original["name"]), int(original["mode"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"install record in {conf_dir} is damaged: {exc!r}") from None
    if os.path.basename(name) != name:
        raise ConfigError(f"install record in {conf_dir} names a file outside it: {name!r}")
    atomic_write(os.path.join(conf_dir, name), content, st, mode=mode)
    if name != current:
        os.unlink(os.path.join(conf_dir, current))
        fsync_dir(conf_dir)


def _load_record(conf_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(conf_dir, RECORD_NAME), "rb") as f:
            record = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read install record in {conf_dir}: {exc}") from exc
    return record if isinstance(record, dict) else None


# --- files -------------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_if_different(path: str, data: bytes) -> bool:
    with contextlib.suppress(FileNotFoundError):
        if read_file(path)[0] == data:
            return False
    atomic_write(path, data, mode=RECORD_MODE)
    return True


def _copy_executable(source: str, dest: str) -> bool:
    data = read_file(source)[0]
    with contextlib.suppress(FileNotFoundError):
        current, st = read_file(dest)
        if current == data and stat.S_IMODE(st.st_mode) == BINARY_MODE:
            return False
    os.makedirs(os.path.dirname(dest) or ".", mode=0o755, exist_ok=True)
    atomic_write(dest, data, mode=BINARY_MODE)
    return True
