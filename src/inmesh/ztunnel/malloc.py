"""glibc's allocator tuned for a proxy that allocates and frees large buffers all the time.

uvloop reads TLS into a fresh 256 KiB ``bytes`` per read and the relay's reads can be as big.
glibc serves anything above its mmap threshold (128 KiB at start) with a fresh mmap, which
the shrink to the bytes actually read turns into an mremap and the free into a munmap: three
system calls and page faults for every message, even a 1-byte one. Raising the threshold (and
the trim threshold with it, so freed buffers are not handed back to the kernel at once) keeps
these buffers on the heap. The cost is memory the heap may keep: at most the trim threshold
beyond what is in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
"""Allocations below this come from the heap (bytes); glibc caps it at 32 MiB on 64-bit."""
TRIM_THRESHOLD = 32 << 20
"""Free memory at the top of the heap kept before glibc gives it back (bytes)."""


def keep_buffers_on_heap() -> bool:
    """Apply the thresholds; False (and a debug line) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError) as exc:
        log.debug("no mallopt here (%s): allocator left as it is", exc)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1) and ok
    if not ok:
        log.debug("mallopt refused the thresholds: allocator left as it is")
    return ok
