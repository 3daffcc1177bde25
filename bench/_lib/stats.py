"""The benchmark's arithmetic, pure: medians over rounds, paired ratios, targets and verdicts.

Samples are plain dicts ``{path: {metric: value}}`` per round. Ratios are paired: each round's
path value is divided by (or subtracted from) the *same round's* direct value, and the median
of those per-round figures is reported, so slow drift of a noisy machine cancels out.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PathDef:
    name: str
    client: str
    server: str
    hops: int
    """Proxy relays on the path: 0 direct, 1 client outbound, 2 outbound + server inbound."""


DIRECT = PathDef("direct", "client-plain", "server-plain", 0)
ONE_HOP = PathDef("one_hop", "client-mesh", "server-plain", 1)
TWO_HOPS = PathDef("two_hops", "client-mesh", "server-mesh", 2)
PATHS = (DIRECT, ONE_HOP, TWO_HOPS)

THROUGHPUT_METRICS = ("tput_1_gbps", "tput_4_gbps")
LATENCY_METRICS = ("rr_p50_us", "rr_p99_us", "rr1_p50_us", "rr1_p99_us")
"""rr: processes scheduled freely on all CPUs; rr1: client, server and ztunnel on one CPU."""

LABELS = {
    "tput_1_gbps": "1-stream throughput",
    "tput_4_gbps": "4-stream throughput",
    "rr_p50_us": "rr p50",
    "rr1_p50_us": "1-CPU rr p50",
}

Round = Mapping[str, Mapping[str, float | None]]
"""One round: path name -> metric name -> value (None when that measurement failed)."""


@dataclass(frozen=True)
class Target:
    path: str
    metric: str
    kind: str
    """'ratio' (path/direct, at least `bound`) or 'added_us_per_hop' (at most `bound`)."""
    bound: float

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.bound if self.kind == "ratio" else value <= self.bound

    def describe(self) -> str:
        what = LABELS.get(self.metric, self.metric)
        if self.kind == "ratio":
            return f"{self.path}: {what} >= {self.bound:.0%} of direct"
        return f"{self.path}: {what} added <= {self.bound:g} us per hop"


TARGETS = (
    Target("one_hop", "tput_1_gbps", "ratio", 0.60),
    Target("one_hop", "tput_4_gbps", "ratio", 0.60),
    Target("two_hops", "tput_1_gbps", "ratio", 0.45),
    Target("two_hops", "tput_4_gbps", "ratio", 0.45),
    Target("one_hop", "rr_p50_us", "added_us_per_hop", 25.0),
    Target("two_hops", "rr_p50_us", "added_us_per_hop", 25.0),
    Target("one_hop", "rr1_p50_us", "added_us_per_hop", 25.0),
    Target("two_hops", "rr1_p50_us", "added_us_per_hop", 25.0),
)


def median_of(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(rounds: Sequence[Round], path: str, metrics: Sequence[str]) -> dict[str, float | None]:
    return {m: median_of([r.get(path, {}).get(m) for r in rounds]) for m in metrics}


def paired(rounds: Sequence[Round], path: PathDef, metric: str, kind: str) -> float | None:
    """Median over rounds of this path's ratio to direct, or of the added µs per hop."""
    out: list[float | None] = []
    for r in rounds:
        base, value = r.get(DIRECT.name, {}).get(metric), r.get(path.name, {}).get(metric)
        if base is None or value is None:
            out.append(None)
        elif kind == "ratio":
            out.append(value / base if base > 0 else None)
        else:
            out.append((value - base) / path.hops)
    return median_of(out)


def relative(rounds: Sequence[Round], path: PathDef) -> dict[str, float | None]:
    """Throughput ratios and added latency per hop of ``path`` against direct."""
    rel: dict[str, float | None] = {}
    for m in THROUGHPUT_METRICS:
        rel[f"{m}_ratio"] = paired(rounds, path, m, "ratio")
    for m in LATENCY_METRICS:
        rel[f"{m}_added_per_hop"] = paired(rounds, path, m, "added_us_per_hop")
    return rel


def verdicts(rel: Mapping[str, Mapping[str, float | None]]) -> list[dict[str, object]]:
    """Each target with the measured value and PASS / MISS (or n/a if not measured)."""
    out: list[dict[str, object]] = []
    for t in TARGETS:
        key = f"{t.metric}_ratio" if t.kind == "ratio" else f"{t.metric}_added_per_hop"
        value = rel.get(t.path, {}).get(key)
        met = t.met(value)
        verdict = "n/a" if met is None else ("PASS" if met else "MISS")
        out.append({
            "target": t.describe(), "path": t.path, "metric": t.metric, "kind": t.kind,
            "bound": t.bound, "value": value, "verdict": verdict,
        })  # fmt: skip
    return out
