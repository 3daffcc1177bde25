import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _lib.connrate import Client, percentile

SCRIPT = Path(__file__).resolve().parents[1] / "_lib" / "connrate.py"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "server", "--bind", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert b"listening" in proc.stdout.readline()
        yield port
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_exact_count_all_echoed(server: int) -> None:
    result = Client("127.0.0.1", server, 4).run_count(40)
    assert result["completed_total"] == 40
    assert result["connections"] == 40
    assert result["error_count"] == 0


def test_timed_run_counts_only_after_warmup(server: int) -> None:
    t0 = time.monotonic()
    result = Client("127.0.0.1", server, 2).run(0.3, 0.1)
    assert time.monotonic() - t0 < START_TIMEOUT_S
    assert 0 < result["connections"] <= result["completed_total"]
    assert result["conn_per_s"] > 0
    assert result["error_count"] == 0


def test_refused_connections_are_counted_not_hung() -> None:
    result = Client("127.0.0.1", free_port(), 2).run_count(6)
    assert result["completed_total"] == 0
    assert result["error_count"] == 6


def test_percentile_nearest_rank() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.0
    assert percentile([1, 2, 3, 4], 0.99) == 4.0
