"""Private files for keys and certificates: created 0600, written atomically (temp file in the
same directory, fsync, rename), so a crash never leaves half a key behind."""

from __future__ import annotations

from pathlib import Path

from inmesh.fsutil import atomic_write

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) 0700 if missing; an existing directory is left as it is."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600 from the first byte on."""
    atomic_write(str(path), data, mode=PRIVATE_FILE_MODE)
