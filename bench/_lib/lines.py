"""What both benchmarks do with one measurement record: the figures that enter the per-round
table, and the progress line printed as it is taken (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MACHINE_FIELDS = {"machine_pct": "machine_busy_pct", "softirq_pct": "machine_softirq_pct"}
"""Per-round key suffix -> record field, for every metric."""
THROUGHPUT_FIELDS = {
    "gbps": "gbps",
    "cpu_s_per_gb": "cpu_s_per_gb",
    "client_pct": "iperf_client_cpu_pct",
    "server_pct": "iperf_server_cpu_pct",
}
"""... for the iperf3 metrics (tput_1, tput_4)."""


def round_values(metric: str, rec: Mapping[str, Any], fields: Mapping[str, str]
                 ) -> dict[str, float | None]:  # fmt: skip
    """``{metric}_{suffix}: rec[field]`` for every (suffix, field) in ``fields``; missing
    fields are None."""
    return {f"{metric}_{key}": rec.get(field) for key, field in fields.items()}


def result_text(metric: str, rec: Mapping[str, Any]) -> str:
    """The measurement's result: latency for the rr metrics, Gb/s for the iperf3 ones."""
    if metric.startswith("rr"):
        return f"p50 {num(rec.get('p50_us'))} us  p99 {num(rec.get('p99_us'))} us"
    return f"{num(rec.get('gbps'), '.2f')} Gb/s  retr {rec.get('retransmits', '-')}"


def cpu_text(metric: str, rec: Mapping[str, Any], proxies: str) -> str:
    """Where the CPU went: ``proxies`` (already formatted), iperf3 for the throughput
    metrics, softirq and the whole machine."""
    cpu = f"ztunnel {proxies}"
    if metric.startswith("tput"):
        cpu += f", iperf3 {num(rec.get('iperf_client_cpu_pct'), '.0f')}%"
        cpu += f"/{num(rec.get('iperf_server_cpu_pct'), '.0f')}%"
    cpu += f", softirq {num(rec.get('machine_softirq_pct'), '.0f')}%"
    cpu += f", machine {num(rec.get('machine_busy_pct'), '.0f')}%"
    return cpu


def error_text(rec: Mapping[str, Any]) -> str:
    return f"  ERROR: {rec['error']}" if "error" in rec else ""


def num(value: Any, fmt: str = ".1f") -> str:
    """``value`` formatted, or "-" if there is none."""
    return "-" if value is None else format(value, fmt)
