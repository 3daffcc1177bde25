"""File helpers shared by the installer and the runtime driver: find the primary config, and
replace files atomically (temp file in the same directory, fsync, rename, fsync the directory).

Temp files are named ``.inmesh-*.tmp``: no runtime loads that extension, so a runtime watching the
conf dir never sees a half-written config.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from inmesh.cni.conflist import is_config_name, pick_primary

DEFAULT_FILE_MODE = 0o600


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


def atomic_write(
    path: str, data: bytes, like: os.stat_result | None = None, *, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data``. Mode: ``mode``, else that of ``like``, else 0600; owner:
    that of ``like`` when given."""
    directory = os.path.dirname(path) or "."
    if mode is None:
        mode = stat.S_IMODE(like.st_mode) if like else DEFAULT_FILE_MODE
    fd, tmp = tempfile.mkstemp(prefix=".inmesh-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if like and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), like.st_uid, like.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def remove_file(path: str) -> bool:
    """Unlink ``path`` durably; False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(path) or ".")
    return True


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
