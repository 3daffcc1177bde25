"""In-pod redirection benchmark: direct vs one proxy hop vs two hops, in a private lab.

    sudo .venv/bin/python bench/inpod.py [--seconds S] [--rounds R] [--json OUT]

Builds its own one-node lab (a fresh root under /run, a random node name) with four pods,
measures three paths in interleaved rounds, prints medians, ratios against direct and the
targets, and always tears the lab down (also on Ctrl-C, SIGTERM or failure). A benchmark
reports; its exit code does not depend on the targets (0 = measured, 1 = could not measure
everything, 130 = interrupted). See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from _lib import lines
from _lib.benchlab import BenchError, BenchLab
from _lib.clients import RR_SCRIPT, iperf, round_trips
from _lib.lines import MACHINE_FIELDS, THROUGHPUT_FIELDS, cpu_text, error_text, num, result_text
from _lib.procstat import CpuUse, CpuWindow, pinned
from _lib.report import render
from _lib.runctl import (
    NCPU,
    add_common_args,
    background_busy,
    close_run,
    machine_meta,
    stop_on_signals,
)
from _lib.runctl import signals_ignored as _signals_ignored
from _lib.stats import (
    LATENCY_METRICS,
    PATHS,
    THROUGHPUT_METRICS,
    PathDef,
    Round,
    medians,
    relative,
    verdicts,
)

from inmesh.errors import InmeshError

IPERF_PORT = 5201
RR_PORT = 7000
RR_PIN_PORT = 7001
"""Echo servers pinned to PIN_CPU, for the one-CPU latency test."""
PIN_CPU = 0
STREAMS = (1, 4)
PLAINTEXT = "unknown"
"""Istio's ``connection_security_policy`` for a connection without mutual TLS."""
PATH_CHECK_TRIPS = 200
"""Round trips of the path check: enough to see the connection, too few to cost time."""
CPU_KEYS = tuple(
    f"{m}_{k}"
    for m in ("tput_1", "tput_4")
    for k in ("proxy_pct", "machine_pct", "softirq_pct", "client_pct", "server_pct", "cpu_s_per_gb")
) + tuple(
    f"{m}_{k}" for m in ("rr", "rr1") for k in ("proxy_pct", "machine_pct", "softirq_pct", "zt_us")
)

Say = Callable[[str], None]


def say(msg: str) -> None:
    print(msg, flush=True)


class Bench:
    def __init__(self, lab: BenchLab, args: argparse.Namespace, report: Say) -> None:
        self.lab = lab
        self.args = args
        self.report = report
        self.measurements: list[dict[str, Any]] = []
        self.ztunnel_pid = lab.ztunnel_pid()

    # -- servers --------------------------------------------------------------------------

    def start_servers(self, kind: str) -> list[subprocess.Popen[bytes]]:
        """One iperf3 or echo server in each server pod; returns once both listen."""
        started = []
        for pod in ("server-plain", "server-mesh"):
            log = f"{kind}-{pod}.log"
            if kind == "iperf3":
                argv = ["iperf3", "-s", "-p", str(IPERF_PORT)]
                port = IPERF_PORT
            elif kind == "rr":
                argv = [sys.executable, str(RR_SCRIPT), "server", "--port", str(RR_PORT)]
                port = RR_PORT
            else:  # rr1: the same server, pinned
                port = RR_PIN_PORT
                argv = ["taskset", "-c", str(PIN_CPU),
                        sys.executable, str(RR_SCRIPT), "server", "--port", str(port)]  # fmt: skip
            proc = self.lab.spawn(pod, argv, log)
            started.append(proc)
            self.lab.wait_listening(proc, port, log)
        return started

    def stop_servers(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            self.lab.stop(proc)

    # -- one measurement ------------------------------------------------------------------

    def _rr(self, path: PathDef, count: int, warmup: int, pin: bool = False) -> dict[str, Any]:
        result = round_trips(self.lab, path.client, self.lab.pods[path.server].ip,
                             RR_PIN_PORT if pin else RR_PORT, count, warmup,
                             PIN_CPU if pin else None)
        return result

    def _iperf(self, path: PathDef, streams: int) -> dict[str, Any]:
        return iperf(self.lab, path.client, self.lab.pods[path.server].ip, IPERF_PORT,
                     self.args.seconds, self.args.omit, streams)

    def measure(self, rnd: int, path: PathDef, metric: str, fn: Callable[[], dict[str, Any]],
                values: dict[str, float | None]) -> None:  # fmt: skip
        """Run ``fn`` inside a CPU window, record it, and fill this round's values."""
        rec: dict[str, Any] = {"round": rnd, "path": path.name, "metric": metric}
        try:
            with CpuWindow(self.ztunnel_pid) as w:
                rec.update(fn())
        except (BenchError, KeyError, ValueError) as exc:
            rec["error"] = str(exc)
        if w.use is not None:
            rec.update(cpu_fields(w.use, rec))
        values.update(round_values(metric, rec))
        self.measurements.append(rec)
        self.report(f"  round {rnd}  {metric:<6} {path.name:<9} {progress(metric, rec)}")

    # -- the run ----------------------------------------------------------------------------

    def path_check(self) -> list[dict[str, Any]]:
        """Prove each path crosses exactly the proxies it claims, in plaintext (the relay this
        script measures; HBONE is `hbone.py`'s), from ztunnel's own counters."""
        servers = self.start_servers("rr")
        checks = []
        try:
            for path in PATHS:
                before = self.lab.proxy_connections(PLAINTEXT)
                self._rr(path, PATH_CHECK_TRIPS, 0)
                after = self.lab.proxy_connections(PLAINTEXT)
                seen = (after[0] - before[0], after[1] - before[1])
                want = (1.0 if path.hops >= 1 else 0.0, 1.0 if path.hops == 2 else 0.0)
                checks.append({"path": path.name, "outbound_opened": seen[0],
                               "inbound_opened": seen[1], "ok": seen == want})  # fmt: skip
                self.report(
                    f"  path check {path.name:<9} ztunnel opened outbound {seen[0]:g},"
                    f" inbound {seen[1]:g} (expected {want[0]:g}, {want[1]:g})"
                )
                if seen != want:
                    raise BenchError(f"{path.name} does not cross the expected proxies")
        finally:
            self.stop_servers(servers)
        return checks

    def one_round(self, rnd: int) -> Round:
        order = PATHS[rnd % len(PATHS) :] + PATHS[: rnd % len(PATHS)]
        values: dict[str, dict[str, float | None]] = {p.name: {} for p in PATHS}
        servers = self.start_servers("iperf3")
        try:
            for streams in STREAMS:
                for path in order:
                    tput = functools.partial(self._iperf, path, streams)
                    self.measure(rnd, path, f"tput_{streams}", tput, values[path.name])
        finally:
            self.stop_servers(servers)
        servers = self.start_servers("rr") + self.start_servers("rr1")
        count, warmup = self.args.rr_count, self.args.rr_warmup
        try:
            for path in order:
                rr = functools.partial(self._rr, path, count, warmup)
                self.measure(rnd, path, "rr", rr, values[path.name])
            with pinned(self.ztunnel_pid, {PIN_CPU}):
                for path in order:
                    rr1 = functools.partial(self._rr, path, count, warmup, pin=True)
                    self.measure(rnd, path, "rr1", rr1, values[path.name])
        finally:
            self.stop_servers(servers)
        return values


def cpu_fields(use: CpuUse, rec: Mapping[str, Any]) -> dict[str, float | None]:
    out = {
        "wall_s": use.wall_s,
        "proxy_cpu_pct": use.proxy_pct,
        "machine_busy_pct": use.machine_pct,
        "machine_softirq_pct": use.softirq_pct,
        "machine_steal_pct": use.steal_pct,
    }
    if rec.get("gbps"):  # core-seconds the machine spent per GB delivered: the path's CPU cost
        out["cpu_s_per_gb"] = use.machine_pct / 100 * NCPU / (rec["gbps"] / 8)
    if rec.get("count") and use.proxy_pct is not None:  # ztunnel CPU per round trip
        trips = rec["count"] + rec.get("warmup", 0)
        out["proxy_cpu_us_per_trip"] = use.proxy_pct / 100 * use.wall_s / trips * 1e6
    return out


def round_values(metric: str, rec: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures of one measurement that enter the per-round table (see stats.Round)."""
    fields = {"proxy_pct": "proxy_cpu_pct", **MACHINE_FIELDS}
    if metric.startswith("rr"):
        fields |= {"p50_us": "p50_us", "p99_us": "p99_us", "zt_us": "proxy_cpu_us_per_trip"}
    else:
        fields |= THROUGHPUT_FIELDS
    return lines.round_values(metric, rec, fields)


def progress(metric: str, rec: Mapping[str, Any]) -> str:
    """One line per measurement: the result, then where the CPU went."""
    cpu = cpu_text(metric, rec, f"{num(rec.get('proxy_cpu_pct'), '.0f')}%")
    return f"{result_text(metric, rec):<28} ({cpu}){error_text(rec)}"


def summarize(rounds: list[Round]) -> dict[str, Any]:
    rel = {p.name: relative(rounds, p) for p in PATHS if p.hops}
    return {
        "absolute": {p.name: medians(rounds, p.name, THROUGHPUT_METRICS + LATENCY_METRICS)
                     for p in PATHS},
        "cpu": {p.name: medians(rounds, p.name, CPU_KEYS) for p in PATHS},
        "relative": rel,
        "targets": verdicts(rel),
    }  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, rounds=4, rr_count=20000, rr_warmup=1000)
    p.add_argument("--json", metavar="OUT", help="also write all numbers as JSON to OUT")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.rr_count < 100 or args.omit < 0:
        p.error("need --rounds >= 1, --seconds > 0, --rr-count >= 100, --omit >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        say("bench/inpod.py needs root (network namespaces, nsenter)")
        return 1
    stop_on_signals()
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    doc: dict[str, Any] = {"meta": {"started": started.isoformat(timespec="seconds"),
                                    "loadavg_start": os.getloadavg(), **machine_meta()},
                           "settings": vars(args).copy()}  # fmt: skip
    doc["meta"]["background_busy_pct_start"] = background_busy()
    lab = BenchLab(say, mtls=False)  # in-pod redirection itself: plaintext proxies
    rounds: list[Round] = []
    measurements: list[dict[str, Any]] = []
    code = 0
    try:
        say(f"building a private lab at {lab.root}")
        lab.build()
        bench = Bench(lab, args, say)
        measurements = bench.measurements
        doc["meta"]["backend"] = lab.lab.status().nodes[0].backend
        doc["path_check"] = bench.path_check()
        for rnd in range(1, args.rounds + 1):
            say(f"round {rnd}/{args.rounds}")
            rounds.append(bench.one_round(rnd))
    except (BenchError, InmeshError) as exc:
        say(f"ERROR: {exc}")
        code = 1
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    finally:
        say("tearing the lab down")
        with _signals_ignored():  # a second Ctrl-C or a SIGTERM must not cut the cleanup short
            lab.close()
    doc["measurements"] = measurements
    doc["rounds"] = rounds
    doc["meta"]["background_busy_pct_end"] = background_busy()
    doc["meta"].update(duration_s=round(time.monotonic() - t0, 1),
                       loadavg_end=os.getloadavg())  # fmt: skip
    if rounds:
        doc["summary"] = summarize(rounds)
        say("")
        say(render(doc["summary"], len(rounds)))
    return close_run(doc, measurements, code, args.json, say)


if __name__ == "__main__":
    sys.exit(main())
