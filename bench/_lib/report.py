"""Plain-text tables of a benchmark run: absolute medians, figures against direct, targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from _lib.stats import LATENCY_METRICS, PATHS


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return lines


def render(summary: Mapping[str, Any], rounds: int) -> str:
    abs_, rel, cpu = summary["absolute"], summary["relative"], summary["cpu"]
    out = [f"Medians over {rounds} round(s):", ""]
    out += _table(
        ["path", "hops", "1 stream Gb/s", "4 streams Gb/s", "rr p50 us", "rr p99 us",
         "1-CPU rr p50 us", "1-CPU rr p99 us"],
        [
            [p.name, str(p.hops),
             _num(abs_[p.name]["tput_1_gbps"], ".2f"), _num(abs_[p.name]["tput_4_gbps"], ".2f")]
            + [_num(abs_[p.name][m], ".1f") for m in LATENCY_METRICS]
            for p in PATHS
        ],
    )  # fmt: skip
    out += ["", "Against direct, paired per round (median of the per-round figures):", ""]
    out += _table(
        ["path", "1 stream", "4 streams", "rr +p50 us/hop", "rr +p99 us/hop",
         "1-CPU rr +p50 us/hop", "1-CPU rr +p99 us/hop"],
        [
            [p.name, _pct(rel[p.name]["tput_1_gbps_ratio"]),
             _pct(rel[p.name]["tput_4_gbps_ratio"])]
            + [_signed(rel[p.name][f"{m}_added_per_hop"]) for m in LATENCY_METRICS]
            for p in PATHS if p.hops
        ],
    )  # fmt: skip
    out += ["", "CPU during the throughput tests (medians; processes in % of one core, "
            "softirq and machine in % of all cores):", ""]  # fmt: skip
    out += _table(
        ["path", "streams", "ztunnel", "iperf3 client", "iperf3 server", "softirq", "machine",
         "core-s per GB"],
        [
            [p.name, str(n)] + [
                f"{_num(cpu[p.name][f'tput_{n}_{k}'], '.0f')}%"
                for k in ("proxy_pct", "client_pct", "server_pct", "softirq_pct", "machine_pct")
            ] + [_num(cpu[p.name][f"tput_{n}_cpu_s_per_gb"], ".2f")]
            for p in PATHS for n in (1, 4)
        ],
    )  # fmt: skip
    out += ["", "ztunnel CPU per 1-byte round trip (medians, us of its user + system time, "
            "softirq run in its context included):", ""]  # fmt: skip
    out += _table(
        ["path", "free rr", "1-CPU rr"],
        [[p.name, _num(cpu[p.name]["rr_zt_us"], ".1f"), _num(cpu[p.name]["rr1_zt_us"], ".1f")]
         for p in PATHS if p.hops],
    )  # fmt: skip
    out += ["", "Targets (reported, not enforced):", ""]
    for v in summary["targets"]:
        value = v["value"]
        if v["kind"] == "ratio":
            shown = "-" if value is None else f"{value * 100:.1f}%"
        else:
            shown = f"{_signed(value)} us"
        out.append(f"  {v['verdict']:<4}  {v['target']:<50} measured {shown}")
    return "\n".join(out)
