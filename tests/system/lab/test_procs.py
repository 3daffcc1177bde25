"""Detached processes: spawned outside our process tree, stopped by pid with escalation."""

from __future__ import annotations

import sys
from pathlib import Path

from inmesh.lab import procs
from inmesh.lab._poll import poll_until
from inmesh.lab.procs import ProcState

IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring', flush=True); time.sleep(60)"
)


def test_spawned_daemon_is_recognised_and_stopped(tmp_path: Path) -> None:
    tag = f"lab-procs-test-{tmp_path.name}"
    argv = [sys.executable, "-c", "import time, sys; print('up', flush=True); time.sleep(60)", tag]
    rec = procs.spawn_detached(argv, tmp_path / "logs" / "p.log", (tag,))
    try:
        assert procs.state_of(rec) is ProcState.RUNNING
        assert procs.stop(rec, 5.0, 0.02) == "stopped"
        assert procs.state_of(rec) is ProcState.EXITED
        assert procs.stop(rec, 5.0, 0.02) == "not running"
    finally:
        procs.stop(rec, 1.0, 0.02)


def test_a_daemon_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    tag = f"lab-procs-kill-{tmp_path.name}"
    log = tmp_path / "k.log"
    rec = procs.spawn_detached([sys.executable, "-c", IGNORE_TERM, tag], log, (tag,))
    try:
        assert poll_until(lambda: "ignoring" in log.read_text(), 5, 0.02)
        assert procs.stop(rec, 0.5, 0.02) == "killed"
        assert procs.state_of(rec) is ProcState.EXITED
    finally:
        procs.stop(rec, 1.0, 0.02)


def test_exec_failure_shows_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "missing.log"
    rec = procs.spawn_detached(["/nonexistent/binary"], log, ("/nonexistent/binary",))
    assert poll_until(lambda: procs.state_of(rec) is ProcState.EXITED, 5, 0.02)
    assert poll_until(lambda: "cannot exec" in log.read_text(), 5, 0.02)
