"""The HBONE benchmark's arithmetic, pure: paths, medians, paired comparisons, targets.

Four paths: a direct one and an HBONE one on the same node, the same pair across two nodes.
Each HBONE path is compared with *its* direct path (same node with same node, cross-node with
cross-node), paired per round: each round's HBONE figure against the same round's direct figure,
then the median over rounds. Samples are ``{path: {metric: value}}`` per round (`stats.Round`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from _lib.stats import Round, median_of, medians


@dataclass(frozen=True)
class HPath:
    name: str
    client: str
    server: str
    baseline: str | None
    """The direct path an HBONE path is compared with; None for a direct path."""
    where: str
    """'same node' or 'cross node'."""

    @property
    def hbone(self) -> bool:
        return self.baseline is not None


DIRECT_SAME = HPath("direct_same", "client-plain", "server-plain", None, "same node")
HBONE_SAME = HPath("hbone_same", "client-mesh", "server-mesh", "direct_same", "same node")
DIRECT_CROSS = HPath("direct_cross", "client-plain", "server-plain-n2", None, "cross node")
HBONE_CROSS = HPath("hbone_cross", "client-mesh", "server-mesh-n2", "direct_cross", "cross node")
PATHS = (DIRECT_SAME, HBONE_SAME, DIRECT_CROSS, HBONE_CROSS)
BY_NAME = {p.name: p for p in PATHS}

RATIO_METRICS = ("tput_1_gbps", "tput_4_gbps", "conn_per_s", "conn1_per_s")
"""Compared as HBONE / direct. conn: --conn-parallel connections in flight; conn1: serial."""
ADDED_METRICS = ("rr_p50_us", "rr_p99_us", "rr1_p50_us", "rr1_p99_us", "conn1_p50_us")
"""Compared as HBONE - direct (microseconds the two proxy hops add)."""
METRICS = RATIO_METRICS + ADDED_METRICS

LABELS = {
    "tput_1_gbps": "1-stream throughput",
    "tput_4_gbps": "4-stream throughput",
    "rr_p50_us": "rr p50",
    "rr1_p50_us": "1-CPU rr p50",
    "conn_per_s": "new connections",
    "conn1_p50_us": "new connection p50 (serial)",
}


@dataclass(frozen=True)
class Target:
    path: str
    metric: str
    kind: str
    """'ratio' (HBONE/direct >= bound), 'added_us' (HBONE - direct <= bound) or
    'at_least' (the HBONE path's own median >= bound)."""
    bound: float

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value <= self.bound if self.kind == "added_us" else value >= self.bound

    def describe(self) -> str:
        what = LABELS.get(self.metric, self.metric)
        if self.kind == "ratio":
            return f"{self.path}: {what} >= {self.bound:.0%} of direct"
        if self.kind == "added_us":
            return f"{self.path}: {what} added by the two hops <= {self.bound:g} us"
        return f"{self.path}: {what} >= {self.bound:,.0f}/s"

    def key(self) -> str:
        return {"ratio": f"{self.metric}_ratio", "added_us": f"{self.metric}_added_us"}.get(
            self.kind, self.metric
        )


TARGETS = tuple(
    t
    for path in ("hbone_same", "hbone_cross")
    for t in (
        Target(path, "tput_1_gbps", "ratio", 0.30),
        Target(path, "rr_p50_us", "added_us", 80.0),
        Target(path, "rr1_p50_us", "added_us", 80.0),
        Target(path, "conn_per_s", "at_least", 1000.0),
    )
)


def paired(rounds: Sequence[Round], path: HPath, metric: str) -> float | None:
    """Median over rounds of ``path`` / baseline (ratio metrics) or ``path`` - baseline."""
    assert path.baseline is not None
    out: list[float | None] = []
    for r in rounds:
        base, value = r.get(path.baseline, {}).get(metric), r.get(path.name, {}).get(metric)
        if base is None or value is None:
            out.append(None)
        elif metric in RATIO_METRICS:
            out.append(value / base if base > 0 else None)
        else:
            out.append(value - base)
    return median_of(out)


def relative(rounds: Sequence[Round], path: HPath) -> dict[str, float | None]:
    rel: dict[str, float | None] = {}
    for m in RATIO_METRICS:
        rel[f"{m}_ratio"] = paired(rounds, path, m)
    for m in ADDED_METRICS:
        rel[f"{m}_added_us"] = paired(rounds, path, m)
    return rel


def verdicts(
    rel: Mapping[str, Mapping[str, float | None]], abs_: Mapping[str, Mapping[str, float | None]]
) -> list[dict[str, object]]:
    """Each target with the measured value and PASS / MISS (or n/a if not measured)."""
    out: list[dict[str, object]] = []
    for t in TARGETS:
        source = abs_ if t.kind == "at_least" else rel
        value = source.get(t.path, {}).get(t.key())
        met = t.met(value)
        verdict = "n/a" if met is None else ("PASS" if met else "MISS")
        out.append({
            "target": t.describe(), "path": t.path, "metric": t.metric, "kind": t.kind,
            "bound": t.bound, "value": value, "verdict": verdict,
        })  # fmt: skip
    return out


def summarize(rounds: Sequence[Round], cpu_keys: Sequence[str]) -> dict[str, object]:
    absolute = {p.name: medians(rounds, p.name, METRICS) for p in PATHS}
    rel = {p.name: relative(rounds, p) for p in PATHS if p.hbone}
    return {
        "absolute": absolute,
        "cpu": {p.name: medians(rounds, p.name, cpu_keys) for p in PATHS},
        "relative": rel,
        "targets": verdicts(rel, absolute),
    }
