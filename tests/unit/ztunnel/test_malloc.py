"""The allocator thresholds take effect: large buffers come from the heap, not an mmap each."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from inmesh.ztunnel.malloc import keep_buffers_on_heap
if sys.argv[1] == "tuned":
    assert keep_buffers_on_heap()
def heap():
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("[heap]"):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                return end - start
    return 0
before = heap()
kept = [bytes(1 << 20) for _ in range(8)]  # eight 1 MiB buffers, all alive
print(heap() - before)
"""


def _heap_growth(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return int(out.strip())


def test_large_buffers_stay_on_the_heap_once_tuned() -> None:
    assert _heap_growth("stock") < 1 << 20  # glibc: each 1 MiB buffer is a mapping of its own
    assert _heap_growth("tuned") >= 7 << 20  # the heap grew to hold them (less its free room)
