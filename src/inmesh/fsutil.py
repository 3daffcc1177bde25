"""Durable file replacement: write a temp file in the same directory, fsync, rename, fsync the dir.

Temp files are named ``.inmesh-*.tmp`` (no CNI runtime loads that extension). A crash leaves
either the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

DEFAULT_FILE_MODE = 0o600


def atomic_write(
    path: str, data: bytes, like: os.stat_result | None = None, *, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data``. Mode: ``mode``, else that of ``like``, else 0600 (set
    before any byte is written); owner: that of ``like`` when given."""
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
