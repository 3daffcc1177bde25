"""Reading profiles (pure): py-spy's collapsed stacks and perf's reports, into shares.

py-spy ``record --native --format raw`` writes one line per distinct stack,
``frame;frame;...;leaf count``, outermost frame first, for every Python thread whether it runs
or waits. Stacks that wait (`IDLE_MARKERS` near the leaf: the event loop in epoll, a worker
thread on its queue) are dropped; the rest are the *busy* samples. Each busy sample is charged
to the category of its innermost frame that has one (`category_of`), so a libcrypto leaf under
the ssl module is crypto, an unresolved libc leaf (memcpy) under h2's frame serializer is h2,
and a ``send`` under anything is kernel time in a socket syscall. `pyspy_inclusive` instead
counts a sample for every category anywhere on its stack.

perf ``report --sort dso`` lists ``percent  dso`` lines; ``--sort dso,sym`` adds the symbol.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

SYSCALLS = frozenset({
    "send", "recv", "write", "read", "sendmsg", "recvmsg", "sendto", "recvfrom", "connect",
    "accept", "accept4", "shutdown", "close", "__close", "socket", "setsockopt", "getsockopt",
    "getsockname", "getpeername", "epoll_ctl", "splice", "syscall", "getpid", "writev", "readv",
    "bind", "pipe2", "eventfd_write", "__libc_write", "__libc_read",
})  # fmt: skip
"""libc functions that are thin system-call wrappers: time sampled there is kernel work."""
KERNEL = "kernel: socket syscalls (TCP/IP, socket-buffer copies, wake-ups)"
LIBC = "libc: memory copies and allocation (memmove, malloc; unresolved libc frames)"
"""Any other libc frame. perf resolves what py-spy cannot: almost all of it is memmove."""
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TLS: crypto (libcrypto: AES-GCM, handshakes)", ("(libcrypto",)),
    ("TLS: record layer (libssl, ssl module, memory BIOs)",
     ("(libssl", "(ssl.py", "_ssl", "sslproto")),
    ("HTTP/2: h2, hpack, hyperframe (framing, flow control, headers)",
     ("(h2/", "(hpack/", "(hyperframe/")),
    ("inmesh.hbone (shell, protocol core, streams, relay pumps)", ("(inmesh/hbone/",)),
    ("inmesh.ztunnel (proxy, tunnels, routing, sockets, metrics)",
     ("(inmesh/ztunnel/", "(inmesh/netns.py")),
    ("prometheus_client (metric labels and counters)", ("(prometheus_client/",)),
    ("event loop (uvloop, asyncio)",
     ("(asyncio/", "uvloop", "(loop.", "_asynciomodule", "(core.c", "(linux.c", "(stream.c")),
)  # fmt: skip
"""Category name -> substrings of a frame that put it there (first matching category wins)."""
OTHER = "other (interpreter, allocator, unresolved)"
IDLE_MARKERS = (
    "epoll_wait (", "epoll_pwait (", "_queue_SimpleQueue_get", "PyThread_acquire_lock_timed",
    "pthread_cond_wait", "pthread_cond_timedwait", "sem_clockwait", "sem_timedwait",
    "poll (libc", "select (libc",
)  # fmt: skip
IDLE_DEPTH = 4
"""How many innermost frames are searched for a waiting function."""

_COUNT = re.compile(r"^(.*)\s(\d+)$")
_LINENO = re.compile(r":\d+\)$")


def stacks(text: str) -> Iterator[tuple[list[str], int]]:
    """(frames outermost first, sample count) per line of py-spy raw output."""
    for line in text.splitlines():
        m = _COUNT.match(line.strip())
        if m:
            yield m.group(1).split(";"), int(m.group(2))


def is_idle(frames: list[str]) -> bool:
    return any(marker in f for f in frames[-IDLE_DEPTH:] for marker in IDLE_MARKERS)


def _libc_function(frame: str) -> str | None:
    if not frame.endswith("(libc.so.6)"):
        return None
    return frame.split(" (", 1)[0]


def category_of(frame: str) -> str | None:
    libc = _libc_function(frame)
    if libc is not None:
        return KERNEL if libc in SYSCALLS else LIBC
    for name, needles in CATEGORIES:
        if any(n in frame for n in needles):
            return name
    return None


def _order() -> list[str]:
    return [KERNEL, LIBC] + [c for c, _ in CATEGORIES] + [OTHER]


def busy_stacks(text: str) -> tuple[list[tuple[list[str], int]], int]:
    """The busy stacks, and how many samples were idle."""
    busy, idle = [], 0
    for frames, n in stacks(text):
        if is_idle(frames):
            idle += n
        else:
            busy.append((frames, n))
    return busy, idle


def pyspy_shares(text: str) -> dict[str, float]:
    """Share (0..1) of busy samples per category, by innermost categorized frame; plus the
    sample counts ``busy_samples`` and ``idle_samples``."""
    busy, idle = busy_stacks(text)
    counts: Counter[str] = Counter()
    for frames, n in busy:
        cat = next((c for f in reversed(frames) if (c := category_of(f))), OTHER)
        counts[cat] += n
    total = sum(counts.values()) or 1
    out = {cat: counts[cat] / total for cat in _order() if counts[cat]}
    out["busy_samples"], out["idle_samples"] = float(sum(counts.values())), float(idle)
    return out


def libc_callers(text: str) -> dict[str, float]:
    """Who the libc samples (copies, allocation) are for: share of *all* busy samples per
    category of the innermost non-libc categorized frame above the libc leaf."""
    busy, _ = busy_stacks(text)
    total = sum(n for _, n in busy) or 1
    counts: Counter[str] = Counter()
    for frames, n in busy:
        if category_of(frames[-1]) != LIBC:
            continue
        above = (category_of(f) for f in reversed(frames[:-1]))
        counts[next((c for c in above if c not in (None, LIBC, KERNEL)), OTHER)] += n
    return {k: v / total for k, v in counts.most_common()}


def pyspy_inclusive(text: str, limit: int = 25) -> list[tuple[str, float]]:
    """Python functions by share of busy samples with them anywhere on the stack (line numbers
    dropped), leaving out the frames every sample has (the process's entry)."""
    busy, _ = busy_stacks(text)
    total = sum(n for _, n in busy) or 1
    counts: Counter[str] = Counter()
    for frames, n in busy:
        for f in {_LINENO.sub(")", f) for f in frames if ".py:" in f}:
            counts[f] += n
    shown = [(f, c / total) for f, c in counts.most_common() if c / total < 0.95]
    return shown[:limit]


def top_frames(text: str, limit: int) -> list[tuple[str, float]]:
    """The innermost frames with the most busy samples (unresolved addresses merged per
    library), and their share."""
    busy, _ = busy_stacks(text)
    counts: Counter[str] = Counter()
    for frames, n in busy:
        counts[re.sub(r"^0x[0-9a-f]+ ", "<unresolved> ", frames[-1])] += n
    total = sum(counts.values()) or 1
    return [(f, c / total) for f, c in counts.most_common(limit)]


_PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)(?:\s+\[(.)\]\s+(.*))?$")


def perf_dsos(report: str) -> dict[str, float]:
    """Percent of samples per DSO from ``perf report --sort dso``."""
    out: dict[str, float] = {}
    for line in report.splitlines():
        m = _PERF_LINE.match(line.rstrip())
        if m and not line.lstrip().startswith("#"):
            out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(1))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def perf_symbols(report: str, limit: int = 15) -> list[tuple[str, float]]:
    """Top ``dso symbol`` lines from ``perf report --sort dso,sym``."""
    out: list[tuple[str, float]] = []
    for line in report.splitlines():
        m = _PERF_LINE.match(line.rstrip())
        if m and m.group(4) is not None:
            out.append((f"{m.group(2)} {m.group(4).strip()}", float(m.group(1))))
    return sorted(out, key=lambda s: -s[1])[:limit]


def summary_lines(name: str, rec: dict[str, Any]) -> list[str]:
    """A few human-readable lines for one profiled test (for the console)."""
    lines = []
    for label, data in rec.items():
        if not isinstance(data, dict) or label == "test":
            continue
        if "shares" in data:
            s = data["shares"]
            parts = [f"{v * 100:.0f}% {k.split(' (')[0]}" for k, v in s.items()
                     if not k.endswith("_samples") and v >= 0.03]  # fmt: skip
            lines.append(f"    {name} {label} py-spy ({s['busy_samples']:.0f} busy samples): "
                         + ", ".join(parts))  # fmt: skip
        if "dso_pct" in data:
            parts = [f"{v:.0f}% {k}" for k, v in data["dso_pct"].items() if v >= 1.0]
            lines.append(f"    {name} {label} perf: " + ", ".join(parts))
        if "error" in data:
            lines.append(f"    {name} {label}: {data['error']}")
    return lines
