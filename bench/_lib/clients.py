"""The two load clients both benchmarks run inside a client pod: 1-byte round trips (`rr.py`)
and iperf3 throughput, each returning its numbers as a dict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from _lib.benchlab import BenchLab
from _lib.runctl import CLIENT_SLACK_S

RR_SCRIPT = Path(__file__).resolve().parent / "rr.py"


def round_trips(lab: BenchLab, client: str, server_ip: str, port: int, count: int,
                warmup: int, pin_cpu: int | None = None) -> dict[str, Any]:
    """`rr.py client` in pod ``client`` against an echo server; on ``pin_cpu`` if given."""
    argv = [sys.executable, str(RR_SCRIPT), "client", "--host", server_ip, "--port", str(port),
            "--count", str(count), "--warmup", str(warmup)]  # fmt: skip
    if pin_cpu is not None:
        argv = ["taskset", "-c", str(pin_cpu), *argv]
    result: dict[str, Any] = json.loads(lab.run(client, argv, CLIENT_SLACK_S * 2))
    return result


def iperf(lab: BenchLab, client: str, server_ip: str, port: int, seconds: float, omit: int,
          streams: int) -> dict[str, Any]:
    """An iperf3 client in pod ``client``: received and sent Gb/s, retransmits, iperf's CPU."""
    argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", f"{seconds:g}", "-O", str(omit),
            "-P", str(streams), "-J"]  # fmt: skip
    doc = json.loads(lab.run(client, argv, seconds + omit + CLIENT_SLACK_S))
    end = doc["end"]
    cpu = end.get("cpu_utilization_percent", {})
    return {
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "sender_gbps": end["sum_sent"]["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits"),
        "iperf_client_cpu_pct": cpu.get("host_total"),
        "iperf_server_cpu_pct": cpu.get("remote_total"),
    }
