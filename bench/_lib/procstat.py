"""Readings from /proc: a process's CPU time, the machine's busy time, listening sockets;
and pinning a process's threads to CPUs for the one-CPU latency test.

Used around each measurement to show what limits it: the proxy's CPU share (one core = 100%)
and how busy the whole machine was (all cores = 100%). Listening state is read from
/proc/<pid>/net/tcp{,6}, which shows the network namespace *of that pid*, so a server started
in a pod can be waited for without entering the pod.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
TCP_LISTEN = "0A"
"""State column of /proc/net/tcp for LISTEN."""


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (ztunnel and its inbound workers), parents first."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return out


def tree_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its descendants; None if ``pid`` is gone."""
    own = process_cpu_s(pid)
    if own is None:
        return None
    return own + sum(process_cpu_s(child) or 0.0 for child in family(pid)[1:])


def machine_jiffies() -> list[int]:
    """user, nice, system, idle, iowait, irq, softirq, steal jiffies summed over all CPUs."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return values + [0] * (8 - len(values))


_IDLE, _IOWAIT, _SOFTIRQ, _STEAL = 3, 4, 6, 7


@dataclass(frozen=True)
class CpuUse:
    wall_s: float
    proxy_pct: float | None
    """The proxy's CPU over the window (with its worker processes), in % of one core (None if
    it could not be read).
    Its own user + system time: packet processing the kernel does in softirq context on its
    behalf is not in it (see `softirq_pct`)."""
    machine_pct: float
    """All CPUs busy over the window, in % of the whole machine (100 = every core busy)."""
    softirq_pct: float
    """Share of the machine in softirq (network receive processing), in % of the machine."""
    steal_pct: float
    """Share of the machine taken by the hypervisor for other guests, in % of the machine."""
    also_pct: tuple[float | None, ...] = ()
    """CPU of the further processes given as ``also`` (same order), in % of one core each."""


class CpuWindow:
    """`with CpuWindow(pid) as w: ...` then ``w.use``: CPU spent during the block.

    ``also``: more processes (e.g. the second node's proxy) whose CPU goes to ``use.also_pct``.
    """

    def __init__(self, pid: int | None, also: Sequence[int] = ()) -> None:
        self.pid = pid
        self.also = tuple(also)
        self.use: CpuUse | None = None

    def __enter__(self) -> CpuWindow:
        self._t0 = time.monotonic()
        self._p0 = tree_cpu_s(self.pid) if self.pid else None
        self._a0 = [tree_cpu_s(p) for p in self.also]
        self._m0 = machine_jiffies()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._t0, 1e-9)
        p1 = tree_cpu_s(self.pid) if self.pid else None
        d = [b - a for a, b in zip(self._m0, machine_jiffies(), strict=True)]
        total = max(sum(d), 1)
        busy = total - d[_IDLE] - d[_IOWAIT]
        proxy = None if self._p0 is None or p1 is None else (p1 - self._p0) / wall * 100
        also = tuple(
            None if a0 is None or a1 is None else (a1 - a0) / wall * 100
            for a0, a1 in zip(self._a0, [tree_cpu_s(p) for p in self.also], strict=True)
        )
        machine, softirq, steal = (busy / total * 100, d[_SOFTIRQ] / total * 100,
                                   d[_STEAL] / total * 100)  # fmt: skip
        self.use = CpuUse(wall, proxy, machine, softirq, steal, also)


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of ``pid`` (IPv4 and IPv6)."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@contextlib.contextmanager
def pinned(pid: int | None, cpus: set[int]) -> Iterator[None]:
    """Pin every thread of ``pid`` and of its descendants (a proxy's workers) to ``cpus`` for
    the block, then restore each thread's mask.

    Threads that end meanwhile are skipped; a thread started during the block inherits the
    pinned mask from its creator and keeps it (the proxy starts none while relaying).
    """
    saved: dict[int, set[int]] = {}
    try:
        for tid in [t for member in (family(pid) if pid else []) for t in _threads(member)]:
            with contextlib.suppress(ProcessLookupError):
                saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
        yield
    finally:
        for tid, mask in saved.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, mask)


def _threads(pid: int | None) -> list[int]:
    if pid is None:
        return []
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []
