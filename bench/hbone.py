"""HBONE benchmark: direct vs HBONE (mutual TLS + HTTP/2 CONNECT), same node and across nodes.

    sudo .venv/bin/python bench/hbone.py [--rounds R] [--seconds S] [--json OUT] [--profile DIR]

Builds its own two-node lab (a fresh root under /run, random node names, a control plane and a
fabric between the nodes) with six pods, proves from ztunnel's metrics that each path goes where
it claims (HBONE paths over mutual_tls, direct paths through no proxy), measures throughput,
1-byte latency and new connections per second on four paths in interleaved rounds, prints
medians, figures against the direct path of the same run and the targets, and always tears the
lab down. Exit code: 0 = measured, 1 = could not measure everything, 130 = interrupted; the
targets never change it. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from _lib import lines
from _lib.benchlab import NAMESPACE, BenchError, BenchLab, PodDef
from _lib.clients import RR_SCRIPT, iperf, round_trips
from _lib.hbreport import render
from _lib.hbstats import PATHS, HPath, summarize
from _lib.lines import MACHINE_FIELDS, THROUGHPUT_FIELDS, cpu_text, error_text, num, result_text
from _lib.meshcheck import (
    ConnKey,
    Side,
    delta,
    expected_hbone,
    hbone_dials,
    hbone_pending,
    mismatch,
    opened,
)
from _lib.procstat import CpuUse, CpuWindow, pinned
from _lib.profiling import Profiler
from _lib.runctl import (
    CLIENT_SLACK_S,
    NCPU,
    add_common_args,
    background_busy,
    close_run,
    machine_meta,
    signals_ignored,
    stop_on_signals,
)
from _lib.stats import Round

from inmesh.errors import InmeshError
from inmesh.identity import SpiffeId

BENCH = Path(__file__).resolve().parent
CONN_SCRIPT = BENCH / "_lib" / "connrate.py"
IPERF_PORT = 5201
RR_PORT = 7000
RR_PIN_PORT = 7001
"""Echo servers pinned to PIN_CPU, for the one-CPU latency test."""
CONN_PORT = 7100
PIN_CPU = 0
STREAMS = (1, 4)
SERVER_SA, CLIENT_SA = "bench-server", "bench-client"
PODS = (
    PodDef("client-plain", mesh=False, node=1),
    PodDef("server-plain", mesh=False, node=1),
    PodDef("client-mesh", mesh=True, node=1, service_account=CLIENT_SA),
    PodDef("server-mesh", mesh=True, node=1, service_account=SERVER_SA),
    PodDef("server-plain-n2", mesh=False, node=2),
    PodDef("server-mesh-n2", mesh=True, node=2, service_account=SERVER_SA),
)
SERVER_PODS = tuple(p.name for p in PODS if p.name.startswith("server"))
POD_SYSCTLS = (("net.ipv4.ip_local_port_range", "16000 65535"), ("net.ipv4.tcp_tw_reuse", "1"))
"""Set in every benchmark pod: the connection-rate test opens tens of thousands of connections
a minute, each leaving a TIME_WAIT socket; a wider port range and TIME_WAIT reuse keep it from
running out of ports (the default range is 28,232 ports and TIME_WAIT lasts 60 s)."""
HBONE_READY_TIMEOUT_S = 30.0
"""How long discovery and the CA get to make every mesh pod HBONE-ready on every node."""
CHECK_TRIPS = 200
CHECK_CONNS = 50
CHECK_PARALLEL = 4
"""Path check: one latency connection of CHECK_TRIPS round trips, then CHECK_CONNS new
connections; every one must show up in the proxies' counters exactly as the path claims."""
CONN_ERROR_TOLERANCE = 0.01
"""A connection-rate test with more failed connections than this share counts as failed."""

Say = Callable[[str], None]


def say(msg: str) -> None:
    print(msg, flush=True)


def principal(service_account: str) -> str:
    return SpiffeId.for_workload(NAMESPACE, service_account).uri


class HboneBench:
    def __init__(self, lab: BenchLab, args: argparse.Namespace, report: Say) -> None:
        self.lab = lab
        self.args = args
        self.report = report
        self.measurements: list[dict[str, Any]] = []
        self.zt = [lab.ztunnel_pid(n) for n in lab.nodes]
        """ztunnel pids, node 1 then node 2."""
        self.servers: list[subprocess.Popen[bytes]] = []

    # -- setup ----------------------------------------------------------------------------

    def wait_hbone_ready(self) -> None:
        """Until every node's discovery lists every mesh pod as HBONE and its certificate is
        there: before that, connections would go plaintext (or fail) and prove nothing."""
        mesh = [(p.name, p.node) for p in self.lab.pods.values() if p.mesh]
        deadline = time.monotonic() + HBONE_READY_TIMEOUT_S
        while True:
            pending = hbone_pending({n: self.lab.config_dump(n) for n in self.lab.nodes}, mesh)
            if not pending:
                self.report("every node's ztunnel has every mesh pod as HBONE, certificates in")
                return
            if time.monotonic() > deadline:
                raise BenchError(f"HBONE not ready after {HBONE_READY_TIMEOUT_S:g}s: {pending}")
            time.sleep(0.2)

    def tune_pods(self) -> None:
        for pod in self.lab.pods:
            for key, value in POD_SYSCTLS:
                self.lab.run(pod, ["sysctl", "-q", "-w", f"{key}={value}"], CLIENT_SLACK_S)

    def start_servers(self) -> None:
        """iperf3, echo (free and pinned) and connection-rate servers in every server pod."""
        py = sys.executable
        kinds = {
            "iperf3": (["iperf3", "-s", "-p", str(IPERF_PORT)], IPERF_PORT),
            "rr": ([py, str(RR_SCRIPT), "server", "--port", str(RR_PORT)], RR_PORT),
            "rr1": (["taskset", "-c", str(PIN_CPU), py, str(RR_SCRIPT), "server",
                     "--port", str(RR_PIN_PORT)], RR_PIN_PORT),
            "conn": ([py, str(CONN_SCRIPT), "server", "--port", str(CONN_PORT)], CONN_PORT),
        }  # fmt: skip
        for pod in SERVER_PODS:
            for kind, (argv, port) in kinds.items():
                log = f"{kind}-{pod}.log"
                proc = self.lab.spawn(pod, argv, log)
                self.servers.append(proc)
                self.lab.wait_listening(proc, port, log)

    def stop_servers(self) -> None:
        for proc in self.servers:
            self.lab.stop(proc)
        self.servers = []

    # -- evidence ---------------------------------------------------------------------------

    def counters(self) -> Mapping[ConnKey, float]:
        return opened({n: self.lab.metrics(n) for n in self.lab.nodes})

    def side(self, pod: str) -> Side:
        p = self.lab.pods[pod]
        return Side(pod, p.node, principal(p.service_account))

    def expected(self, path: HPath, n: int) -> dict[ConnKey, float]:
        if not path.hbone:
            return {}
        return expected_hbone(self.side(path.client), self.side(path.server), n)

    def dials(self) -> int | None:
        client = self.lab.pods["client-mesh"]
        return hbone_dials(self.lab.config_dump(client.node), client.name)

    # -- one measurement --------------------------------------------------------------------

    def _rr(self, path: HPath, count: int, warmup: int, pin: bool = False) -> dict[str, Any]:
        result = round_trips(self.lab, path.client, self.lab.pods[path.server].ip,
                             RR_PIN_PORT if pin else RR_PORT, count, warmup,
                             PIN_CPU if pin else None)
        result["units"] = count + warmup
        return result

    def _iperf(self, path: HPath, streams: int) -> dict[str, Any]:
        return iperf(self.lab, path.client, self.lab.pods[path.server].ip, IPERF_PORT,
                     self.args.seconds, self.args.omit, streams)

    def _conn_client(self, path: HPath, parallel: int, extra: list[str]) -> dict[str, Any]:
        argv = [sys.executable, str(CONN_SCRIPT), "client",
                "--host", self.lab.pods[path.server].ip, "--port", str(CONN_PORT),
                "--parallel", str(parallel), *extra]  # fmt: skip
        timeout = self.args.conn_seconds + CLIENT_SLACK_S * 2
        result: dict[str, Any] = json.loads(self.lab.run(path.client, argv, timeout))
        return result

    def _conn(self, path: HPath, parallel: int) -> dict[str, Any]:
        """Connection rate; for HBONE also how many TLS connections the pool dialled."""
        a = self.args
        dials0 = self.dials() if path.hbone else None
        result = self._conn_client(
            path, parallel, ["--seconds", f"{a.conn_seconds:g}", "--warmup", f"{a.conn_warmup:g}"]
        )
        dials1 = self.dials() if path.hbone else None
        result["units"] = result["completed_total"]
        if dials0 is not None and dials1 is not None:
            result["tls_dials"] = dials1 - dials0
        if result["error_count"] > CONN_ERROR_TOLERANCE * max(result["completed_total"], 1):
            result["error"] = f"{result['error_count']} connections failed: {result['errors']}"
        return result

    def measure(self, rnd: int, path: HPath, metric: str, fn: Callable[[], dict[str, Any]],
                values: dict[str, float | None]) -> None:  # fmt: skip
        """Run ``fn`` inside a CPU window, check from both proxies' counters that its
        connections went the way the path claims, record it, and fill this round's values."""
        rec: dict[str, Any] = {"round": rnd, "path": path.name, "metric": metric}
        zt1, others = self.zt[0], [p for p in self.zt[1:] if p]
        window: CpuWindow | None = None
        try:
            before = self.counters()
            with CpuWindow(zt1, also=others) as window:
                rec.update(fn())
            seen = delta(before, self.counters())
            rec["proxy_counted"] = {k.describe(): v for k, v in seen.items()}
            problems = mismatch(seen, self.expected(path, connections_made(metric, rec)))
            rec["path_verified"] = not problems
            if problems:
                rec["error"] = "proxy counters disagree with the path: " + "; ".join(problems[:4])
        except (BenchError, InmeshError, KeyError, ValueError) as exc:
            rec["error"] = str(exc)
        if window is not None and window.use is not None:
            rec.update(cpu_fields(window.use, rec))
        values.update(round_values(metric, rec))
        self.measurements.append(rec)
        self.report(f"  round {rnd}  {metric:<6} {path.name:<12} {progress(metric, rec)}")

    # -- the run ----------------------------------------------------------------------------

    def path_check(self) -> list[dict[str, Any]]:
        """Prove each path crosses exactly the proxies it claims, from ztunnel's own counters:
        one latency connection and CHECK_CONNS new connections per path."""
        checks = []
        for path in PATHS:
            before = self.counters()
            self._rr(path, CHECK_TRIPS, 0)
            conn = self._conn_client(path, CHECK_PARALLEL, ["--count", str(CHECK_CONNS)])
            seen = delta(before, self.counters())
            n = 1 + conn["completed_total"]
            problems = mismatch(seen, self.expected(path, n))
            if conn["error_count"]:
                problems.append(f"{conn['error_count']} connections failed: {conn['errors']}")
            checks.append({"path": path.name, "connections": n,
                           "proxy_counted": {k.describe(): v for k, v in seen.items()},
                           "ok": not problems, "problems": problems})  # fmt: skip
            if path.hbone:
                src = sum(v for k, v in seen.items() if k.reporter == "source")
                dst = sum(v for k, v in seen.items() if k.reporter == "destination")
                shown = f"mutual_tls opened: source {src:g}, destination {dst:g} (expected {n})"
            else:
                shown = f"proxy connections opened: {sum(seen.values()):g} (expected 0)"
            self.report(f"  path check {path.name:<12} {shown}: {'ok' if not problems else 'NO'}")
            if problems:
                raise BenchError(f"{path.name} does not go where it claims: {problems}")
        return checks

    def one_round(self, rnd: int) -> Round:
        k = rnd % len(PATHS)
        order = PATHS[k:] + PATHS[:k]
        values: dict[str, dict[str, float | None]] = {p.name: {} for p in PATHS}
        for streams in STREAMS:
            for path in order:
                tput = functools.partial(self._iperf, path, streams)
                self.measure(rnd, path, f"tput_{streams}", tput, values[path.name])
        count, warmup = self.args.rr_count, self.args.rr_warmup
        for path in order:
            rr = functools.partial(self._rr, path, count, warmup)
            self.measure(rnd, path, "rr", rr, values[path.name])
        with contextlib.ExitStack() as pins:
            for pid in self.zt:
                pins.enter_context(pinned(pid, {PIN_CPU}))
            for path in order:
                rr1 = functools.partial(self._rr, path, count, warmup, pin=True)
                self.measure(rnd, path, "rr1", rr1, values[path.name])
        for metric, parallel in (("conn", self.args.conn_parallel), ("conn1", 1)):
            for path in order:
                conn = functools.partial(self._conn, path, parallel)
                self.measure(rnd, path, metric, conn, values[path.name])
        return values


def connections_made(metric: str, rec: Mapping[str, Any]) -> int:
    """TCP connections a test opened to the server: iperf3 one control connection plus one per
    stream, the latency client one, the rate client every connection that got its echo."""
    if metric.startswith("tput_"):
        return int(metric.removeprefix("tput_")) + 1
    if metric.startswith("rr"):
        return 1
    return int(rec["completed_total"])


# fmt: off
CPU_KEYS = tuple(
    f"{m}_{k}"
    for m in ("tput_1", "tput_4")
    for k in ("zt1_pct", "zt2_pct", "machine_pct", "softirq_pct", "client_pct", "server_pct",
              "cpu_s_per_gb")
) + tuple(
    f"{m}_{k}"
    for m in ("rr", "rr1", "conn", "conn1")
    for k in ("zt1_pct", "zt2_pct", "machine_pct", "softirq_pct", "zt_us")
) + ("conn_tls_dials",)
# fmt: on


def cpu_fields(use: CpuUse, rec: Mapping[str, Any]) -> dict[str, float | None]:
    zt2 = use.also_pct[0] if use.also_pct else None
    out: dict[str, float | None] = {
        "wall_s": use.wall_s,
        "zt1_cpu_pct": use.proxy_pct,
        "zt2_cpu_pct": zt2,
        "machine_busy_pct": use.machine_pct,
        "machine_softirq_pct": use.softirq_pct,
        "machine_steal_pct": use.steal_pct,
    }
    if rec.get("gbps"):  # core-seconds the machine spent per GB delivered: the path's CPU cost
        out["cpu_s_per_gb"] = use.machine_pct / 100 * NCPU / (rec["gbps"] / 8)
    if rec.get("units") and use.proxy_pct is not None:
        # both proxies' CPU per round trip (rr) or per connection (conn), in microseconds
        zt_s = (use.proxy_pct + (zt2 or 0.0)) / 100 * use.wall_s
        out["proxy_cpu_us_per_unit"] = zt_s / rec["units"] * 1e6
    return out


def round_values(metric: str, rec: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures of one measurement that enter the per-round table."""
    if "error" in rec:  # a path that did not go where it claims (or failed) gives no numbers
        rec = {k: v for k, v in rec.items() if k not in ("gbps", "p50_us", "p99_us",
                                                         "conn_per_s")}  # fmt: skip
    fields = {"zt1_pct": "zt1_cpu_pct", "zt2_pct": "zt2_cpu_pct", **MACHINE_FIELDS}
    if metric.startswith("rr"):
        fields |= {"p50_us": "p50_us", "p99_us": "p99_us", "zt_us": "proxy_cpu_us_per_unit"}
    elif metric.startswith("conn"):
        fields |= {"per_s": "conn_per_s", "p50_us": "p50_us", "zt_us": "proxy_cpu_us_per_unit",
                   "tls_dials": "tls_dials"}  # fmt: skip
    else:
        fields |= THROUGHPUT_FIELDS
    return lines.round_values(metric, rec, fields)


def progress(metric: str, rec: Mapping[str, Any]) -> str:
    """One line per measurement: the result, then where the CPU went."""
    if metric.startswith("conn"):
        shown = f"{num(rec.get('conn_per_s'), '.0f')} conn/s  p50 {num(rec.get('p50_us'))} us"
        if rec.get("error_count"):
            shown += f"  {rec['error_count']} failed"
    else:
        shown = result_text(metric, rec)
    proxies = f"{num(rec.get('zt1_cpu_pct'), '.0f')}%/{num(rec.get('zt2_cpu_pct'), '.0f')}%"
    cpu = cpu_text(metric, rec, proxies)
    if rec.get("path_verified"):
        cpu += ", path ok"
    return f"{shown:<40} ({cpu}){error_text(rec)}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_common_args(p, rounds=3, rr_count=10000, rr_warmup=500)
    p.add_argument(
        "--conn-seconds",
        type=float,
        default=2.0,
        help="timed seconds per connection-rate test (default 2)",
    )
    p.add_argument(
        "--conn-warmup", type=float, default=0.25, help="untimed seconds before them (default 0.25)"
    )
    p.add_argument(
        "--conn-parallel",
        type=int,
        default=16,
        help="connections the rate client keeps in flight (default 16); a serial test"
        " (one at a time) runs as well",
    )
    p.add_argument("--json", metavar="OUT", help="also write all numbers as JSON to OUT")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="after the rounds, profile the ztunnels during HBONE tests into DIR",
    )
    p.add_argument("--py-spy", metavar="PATH", default="py-spy",
                   help="py-spy executable for --profile (default: py-spy on PATH)")  # fmt: skip
    args = p.parse_args(argv)
    if (args.rounds < 1 or args.seconds <= 0 or args.rr_count < 100 or args.omit < 0
            or args.conn_seconds <= 0 or args.conn_parallel < 1):  # fmt: skip
        p.error("need --rounds >= 1, --seconds > 0, --rr-count >= 100, --omit >= 0,"
                " --conn-seconds > 0, --conn-parallel >= 1")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        say("bench/hbone.py needs root (network namespaces, nsenter)")
        return 1
    stop_on_signals()
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    doc: dict[str, Any] = {"meta": {"started": started.isoformat(timespec="seconds"),
                                    "loadavg_start": os.getloadavg(), **machine_meta()},
                           "settings": vars(args).copy()}  # fmt: skip
    doc["meta"]["background_busy_pct_start"] = background_busy()
    lab = BenchLab(say, nodes=2, pods=PODS)
    rounds: list[Round] = []
    bench: HboneBench | None = None
    code = 0
    try:
        say(f"building a private two-node lab at {lab.root}")
        lab.build()
        bench = HboneBench(lab, args, say)
        doc["meta"]["backend"] = lab.lab.status().nodes[0].backend
        doc["meta"]["nodes"] = lab.nodes
        bench.wait_hbone_ready()
        bench.tune_pods()
        bench.start_servers()
        doc["path_check"] = bench.path_check()
        for rnd in range(1, args.rounds + 1):
            say(f"round {rnd}/{args.rounds}")
            rounds.append(bench.one_round(rnd))
        if args.profile:
            say(f"profiling the ztunnels into {args.profile}")
            doc["profile"] = Profiler(bench, Path(args.profile), args.py_spy, say).run()
    except (BenchError, InmeshError) as exc:
        say(f"ERROR: {exc}")
        code = 1
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    finally:
        say("tearing the lab down")
        with signals_ignored():  # a second Ctrl-C or a SIGTERM must not cut the cleanup short
            if bench is not None:
                bench.stop_servers()
            lab.close()
    measurements = bench.measurements if bench else []
    doc["measurements"] = measurements
    doc["rounds"] = rounds
    doc["meta"]["background_busy_pct_end"] = background_busy()
    doc["meta"].update(duration_s=round(time.monotonic() - t0, 1),
                       loadavg_end=os.getloadavg())  # fmt: skip
    if rounds:
        doc["summary"] = summarize(rounds, CPU_KEYS)
        say("")
        say(render(doc["summary"], len(rounds), measurements, args.conn_parallel))
    return close_run(doc, measurements, code, args.json, say)


if __name__ == "__main__":
    sys.exit(main())
