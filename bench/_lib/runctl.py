"""What every benchmark script shares around its measurements: the machine's description, the
background load before and after, and signals (stop cleanly on Ctrl-C/SIGTERM/SIGHUP, and let
nothing interrupt the teardown)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _lib.procstat import CpuWindow

NCPU = os.cpu_count() or 1
BACKGROUND_S = 1.0
"""Seconds of machine-wide CPU sampling before the lab is built and after it is gone."""
BUSY_WARNING_PCT = 25.0
"""Background load above which the run is flagged: other work then competes for the CPUs,
which lowers every throughput, the direct one most (it has the most to lose)."""
CLIENT_SLACK_S = 30.0
"""Added to a client's expected run time before it is declared hung."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def machine_meta() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, check=False)
    return {
        "host": socket.gethostname(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "iperf3": iperf.stdout.splitlines()[0] if iperf.stdout else "?",
    }


def background_busy() -> float:
    """How busy the machine is without the benchmark: % of all CPUs over BACKGROUND_S."""
    with CpuWindow(None) as w:
        time.sleep(BACKGROUND_S)
    assert w.use is not None
    return w.use.machine_pct


def interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C: through the `finally` that tears down."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupt)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def close_run(
    doc: dict[str, Any],
    measurements: list[dict[str, Any]],
    code: int,
    json_out: str | None,
    say: Callable[[str], None],
) -> int:
    """The end every script shares: background-load report and warning, failed measurements
    (exit 1), the JSON file. Returns the exit code."""
    busy = (doc["meta"]["background_busy_pct_start"], doc["meta"]["background_busy_pct_end"])
    say(
        f"\nrun took {doc['meta']['duration_s']:.0f}s; background load without the lab"
        f" ({BACKGROUND_S:g} s each): {busy[0]:.0f}% of the CPUs before, {busy[1]:.0f}% after"
    )
    if max(busy) > BUSY_WARNING_PCT:
        say(
            "WARNING: other work was using the CPUs; throughputs are depressed and ratios"
            " against direct flattered. Rerun on a quieter machine for comparable numbers."
        )
    failed = [m for m in measurements if "error" in m]
    if failed:
        say(f"ERROR: {len(failed)} of {len(measurements)} measurements failed (see above)")
        code = code or 1
    if json_out:
        Path(json_out).write_text(json.dumps(doc, indent=2) + "\n")
        say(f"numbers written to {json_out}")
    return code


def add_common_args(
    p: argparse.ArgumentParser, *, rounds: int, rr_count: int, rr_warmup: int
) -> None:
    """The options every benchmark script takes (each picks its own defaults)."""
    p.add_argument(
        "--rounds",
        type=int,
        default=rounds,
        help=f"interleaved rounds over all paths; medians are reported (default {rounds})",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="iperf3 measuring time per throughput test, after --omit (default 3)",
    )
    p.add_argument(
        "--omit", type=int, default=1, help="iperf3 -O: warm-up seconds not counted (default 1)"
    )
    p.add_argument(
        "--rr-count",
        type=int,
        default=rr_count,
        help=f"timed 1-byte round trips per latency test (default {rr_count})",
    )
    p.add_argument(
        "--rr-warmup",
        type=int,
        default=rr_warmup,
        help=f"untimed round trips before them (default {rr_warmup})",
    )
