"""File helpers shared by the installer and the runtime driver: find the primary config; the
atomic replacement itself is `inmesh.fsutil` (re-exported here for the CNI modules)."""

from __future__ import annotations

import os

from inmesh.cni.conflist import is_config_name, pick_primary
from inmesh.fsutil import atomic_write, fsync_dir, remove_file

__all__ = ["atomic_write", "find_primary_config", "fsync_dir", "read_file", "remove_file"]


def find_primary_config(conf_dir: str) -> str | None:
    """Name of the config file a runtime would load from ``conf_dir`` (None: none yet)."""
    try:
        names = os.listdir(conf_dir)
    except FileNotFoundError:
        return None
    return pick_primary(
        n for n in names if is_config_name(n) and os.path.isfile(os.path.join(conf_dir, n))
    )


def read_file(path: str) -> tuple[bytes, os.stat_result]:
    with open(path, "rb") as f:
        return f.read(), os.fstat(f.fileno())
