"""Plain-text tables of an HBONE benchmark run: medians, HBONE against direct, CPU, targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from _lib.hbstats import PATHS
from _lib.report import _num, _pct, _signed, _table


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render(summary: Mapping[str, Any], rounds: int, measurements: Sequence[Mapping[str, Any]],
           parallel: int) -> str:  # fmt: skip
    abs_, rel, cpu = summary["absolute"], summary["relative"], summary["cpu"]
    out = [f"Medians over {rounds} round(s):", ""]
    out += _table(
        ["path", "where", "1 stream Gb/s", "4 streams Gb/s", "rr p50 us", "rr p99 us",
         "1-CPU rr p50 us", "1-CPU rr p99 us", f"new conn/s ({parallel} at once)",
         "serial conn/s", "serial conn p50 us"],
        [
            [p.name, p.where,
             _num(abs_[p.name]["tput_1_gbps"], ".2f"), _num(abs_[p.name]["tput_4_gbps"], ".2f")]
            + [_num(abs_[p.name][m], ".1f")
               for m in ("rr_p50_us", "rr_p99_us", "rr1_p50_us", "rr1_p99_us")]
            + [_rate(abs_[p.name]["conn_per_s"]), _rate(abs_[p.name]["conn1_per_s"]),
               _num(abs_[p.name]["conn1_p50_us"], ".0f")]
            for p in PATHS
        ],
    )  # fmt: skip
    out += ["", "HBONE against the direct path of the same round (median of the per-round "
            "figures; +us = added by the two proxy hops):", ""]  # fmt: skip
    out += _table(
        ["path", "against", "1 stream", "4 streams", "rr +p50 us", "rr +p99 us",
         "1-CPU rr +p50 us", "1-CPU rr +p99 us", "new conn/s", "serial conn/s",
         "serial conn +p50 us"],
        [
            [p.name, str(p.baseline), _pct(rel[p.name]["tput_1_gbps_ratio"]),
             _pct(rel[p.name]["tput_4_gbps_ratio"])]
            + [_signed(rel[p.name][f"{m}_added_us"])
               for m in ("rr_p50_us", "rr_p99_us", "rr1_p50_us", "rr1_p99_us")]
            + [_pct(rel[p.name]["conn_per_s_ratio"]), _pct(rel[p.name]["conn1_per_s_ratio"]),
               _signed(rel[p.name]["conn1_p50_us_added_us"])]
            for p in PATHS if p.hbone
        ],
    )  # fmt: skip
    out += ["", "CPU during the throughput tests (medians; processes in % of one core, "
            "softirq and machine in % of all cores):", ""]  # fmt: skip
    out += _table(
        ["path", "streams", "ztunnel node1", "ztunnel node2", "iperf3 client", "iperf3 server",
         "softirq", "machine", "core-s per GB"],
        [
            [p.name, str(n)] + [
                f"{_num(cpu[p.name][f'tput_{n}_{k}'], '.0f')}%"
                for k in ("zt1_pct", "zt2_pct", "client_pct", "server_pct", "softirq_pct",
                          "machine_pct")
            ] + [_num(cpu[p.name][f"tput_{n}_cpu_s_per_gb"], ".2f")]
            for p in PATHS for n in (1, 4)
        ],
    )  # fmt: skip
    out += ["", "ztunnel CPU per unit of work (medians, us of user + system time of both "
            "ztunnels together):", ""]  # fmt: skip
    out += _table(
        ["path", "per rr round trip", "per 1-CPU round trip", "per new connection",
         "ztunnel node1/node2 during conn test", "TLS handshakes per conn test"],
        [
            [p.name, _num(cpu[p.name]["rr_zt_us"], ".1f"), _num(cpu[p.name]["rr1_zt_us"], ".1f"),
             _num(cpu[p.name]["conn_zt_us"], ".1f"),
             f"{_num(cpu[p.name]['conn_zt1_pct'], '.0f')}% / "
             f"{_num(cpu[p.name]['conn_zt2_pct'], '.0f')}%",
             _num(cpu[p.name]["conn_tls_dials"], ".0f")]
            for p in PATHS if p.hbone
        ],
    )  # fmt: skip
    out += ["", "Every measurement checked against both ztunnels' counters "
            "(istio_tcp_connections_opened_total before and after):", ""]  # fmt: skip
    rows = []
    for p in PATHS:
        tests = [m for m in measurements if m["path"] == p.name]
        ok = [m for m in tests if m.get("path_verified")]
        conns = sum(int(m.get("completed_total", 0)) for m in ok if "completed_total" in m)
        claim = ("each connection opened as mutual_tls, reported by the source and the "
                 "destination ztunnel, with both SPIFFE IDs" if p.hbone
                 else "no proxy counter moved")  # fmt: skip
        rows.append([p.name, f"{len(ok)}/{len(tests)}", f"{conns:,}", claim])
    out += _table(["path", "measurements matching", "rate-test connections", "what was checked"],
                  rows)  # fmt: skip
    out += ["", "Targets (reported, not enforced):", ""]
    for v in summary["targets"]:
        value, kind = v["value"], v["kind"]
        if value is None:
            shown = "-"
        elif kind == "ratio":
            shown = f"{value * 100:.1f}%"
        elif kind == "added_us":
            shown = f"{_signed(value)} us"
        else:
            shown = f"{value:,.0f}/s"
        out.append(f"  {v['verdict']:<4}  {v['target']:<58} measured {shown}")
    return "\n".join(out)
