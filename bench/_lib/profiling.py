"""Where ztunnel's time goes on HBONE paths: py-spy and perf attached during benchmark tests.

`Profiler(bench, out_dir, py_spy, report).run()` runs a few HBONE tests again (single-stream
throughput same node and across nodes, connection rate, 1-byte latency), each once with py-spy
(Python and native frames) and once with perf (whole call chains down into the kernel) attached
to the ztunnel(s) on the path, writes the raw profiles to ``out_dir`` and returns a summary:
shares of samples per category (`profilecats`). A tool that is missing or fails is reported and
skipped; profiling never fails the benchmark.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _lib.benchlab import BenchError
from _lib.hbstats import BY_NAME, HPath
from _lib.profilecats import (
    libc_callers,
    perf_dsos,
    perf_symbols,
    pyspy_inclusive,
    pyspy_shares,
    summary_lines,
    top_frames,
)

if TYPE_CHECKING:
    from hbone import HboneBench

PROFILE_S = 6.0
"""Seconds each test runs while a profiler samples it."""
ATTACH_S = 1.0
"""Head start of the profiler before the test begins (attaching, reading symbols)."""
PYSPY_RATE = 40
"""Samples per second. py-spy pauses the process for each native stack walk, about 2 ms here
(at 200/s a single-stream HBONE test lost 44% of its throughput), so ~10% at this rate. The
test's own result is kept next to the profile to show the perturbation; perf costs far less."""
PERF_FREQ = 499
TOOL_SLACK_S = 60.0
"""Beyond its sampling time, how long a profiler gets to write and symbolize its output."""


@dataclass(frozen=True)
class Scenario:
    name: str
    path: HPath
    metric: str
    """tput_1, conn or rr."""


SCENARIOS = (
    Scenario("tput1-same", BY_NAME["hbone_same"], "tput_1"),
    Scenario("tput1-cross", BY_NAME["hbone_cross"], "tput_1"),
    Scenario("conn-same", BY_NAME["hbone_same"], "conn"),
    Scenario("rr-same", BY_NAME["hbone_same"], "rr"),
)


class Profiler:
    def __init__(self, bench: HboneBench, out: Path, py_spy: str,
                 report: Callable[[str], None]) -> None:  # fmt: skip
        self.bench, self.out, self.report = bench, out, report
        self.py_spy = shutil.which(py_spy)
        self.perf = shutil.which("perf")

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {}
        tools = [t for t, exe in (("py-spy", self.py_spy), ("perf", self.perf)) if exe]
        if not tools:
            self.report("  neither py-spy nor perf found: nothing profiled")
            return summary
        for sc in SCENARIOS:
            for tool in tools:
                key = f"{sc.name}-{tool}"
                try:
                    summary[key] = self._one(sc, tool, key)
                except (BenchError, OSError, subprocess.SubprocessError, ValueError) as exc:
                    summary[key] = {"error": str(exc)}
                self.report(f"  profile {key}: {_brief(summary[key])}")
                for line in summary_lines(key, summary[key]):
                    self.report(line)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _pids(self, sc: Scenario) -> list[tuple[str, int]]:
        lab = self.bench.lab
        nodes = {lab.pods[sc.path.client].node, lab.pods[sc.path.server].node}
        out = []
        for i, node in enumerate(lab.nodes):
            pid = self.bench.zt[i]
            if node in nodes and pid:
                out.append((f"node{i + 1}", pid))
        return out

    def _one(self, sc: Scenario, tool: str, key: str) -> dict[str, Any]:
        duration = PROFILE_S + ATTACH_S + 1.0
        procs = []
        files = {}
        for label, pid in self._pids(sc):
            if tool == "py-spy":
                f = self.out / f"{key}-{label}.txt"
                assert self.py_spy is not None
                argv = [self.py_spy, "record", "-p", str(pid), "-d", f"{duration:g}", "-r",
                        str(PYSPY_RATE), "--native", "--format", "raw", "-o", str(f)]  # fmt: skip
            else:
                f = self.out / f"{key}-{label}.data"
                assert self.perf is not None
                argv = [self.perf, "record", "-q", "-F", str(PERF_FREQ), "-g", "-p", str(pid),
                        "-o", str(f), "--", "sleep", f"{duration:g}"]  # fmt: skip
            files[label] = f
            log = open(self.out / f"{key}-{label}.log", "wb")  # noqa: SIM115 (closed below)
            procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
        result: dict[str, Any] = {}
        try:
            time.sleep(ATTACH_S)
            result["test"] = self._test(sc)
        finally:
            for proc, log in procs:
                try:
                    proc.wait(duration + TOOL_SLACK_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
        for label, f in files.items():
            if not f.exists():
                result[label] = {"error": f"{tool} wrote no output (see {f.stem}.log)"}
            elif tool == "py-spy":
                text = f.read_text(errors="replace")
                result[label] = {"shares": pyspy_shares(text), "libc_callers": libc_callers(text),
                                 "top_leaves": top_frames(text, 15),
                                 "top_inclusive": pyspy_inclusive(text)}  # fmt: skip
            else:
                result[label] = self._perf_report(f)
        return result

    def _perf_report(self, data: Path) -> dict[str, Any]:
        assert self.perf is not None
        reports = {}
        for sort, extra in (("dso", []), ("dso,sym", ["--percent-limit", "0.3"])):
            rep = subprocess.run(
                [self.perf, "report", "-i", str(data), "--stdio", "--no-children",
                 "--sort", sort, "-g", "none", *extra],
                capture_output=True, text=True, timeout=TOOL_SLACK_S, check=False,
            )  # fmt: skip
            reports[sort] = rep.stdout
            (data.parent / f"{data.stem}.{sort.replace(',', '-')}.txt").write_text(rep.stdout)
        return {"dso_pct": perf_dsos(reports["dso"]),
                "top_symbols_pct": perf_symbols(reports["dso,sym"])}  # fmt: skip

    def _test(self, sc: Scenario) -> dict[str, Any]:
        b = self.bench
        if sc.metric == "tput_1":
            args = b.args
            saved = (args.seconds, args.omit)
            args.seconds, args.omit = PROFILE_S, 0
            try:
                return b._iperf(sc.path, 1)
            finally:
                args.seconds, args.omit = saved
        if sc.metric == "conn":
            argv = ["--seconds", f"{PROFILE_S:g}", "--warmup", "0"]
            return b._conn_client(sc.path, b.args.conn_parallel, argv)
        return b._rr(sc.path, int(PROFILE_S * 4000), 0)


def _brief(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"ERROR {rec['error']}"
    test = rec.get("test", {})
    shown = ", ".join(f"{k} {test[k]:.2f}" for k in ("gbps", "conn_per_s", "p50_us") if k in test)
    return shown or "done"
