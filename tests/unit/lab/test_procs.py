"""Recognising a recorded process: pid, start time and command line must all match."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inmesh.lab import procs
from inmesh.lab.procs import ProcState, contains_run, running_pid, state_of
from inmesh.lab.state import ProcessRecord


def _me() -> tuple[int, list[str]]:
    pid = os.getpid()
    ticks = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    return ticks, argv


def test_contains_run() -> None:
    assert contains_run(["py", "inmesh", "agent", "--node", "n1"], ["agent", "--node", "n1"])
    assert not contains_run(["agent", "--node", "n2"], ["agent", "--node", "n1"])
    assert not contains_run(["agent"], ["agent", "--node"])
    assert contains_run(["x"], [])


def test_a_matching_record_is_running() -> None:
    ticks, argv = _me()
    rec = ProcessRecord(os.getpid(), ticks, tuple(argv[-2:]), "log")
    assert state_of(rec) is ProcState.RUNNING
    assert running_pid(rec) == os.getpid()


def test_a_reused_pid_or_other_command_is_not_ours() -> None:
    ticks, _argv = _me()
    assert state_of(ProcessRecord(os.getpid(), ticks + 1, (), "log")) is ProcState.EXITED
    other = ProcessRecord(os.getpid(), ticks, ("inmesh", "agent", "--node", "zz"), "log")
    assert state_of(other) is ProcState.EXITED
    assert running_pid(None) is None


def test_a_vanished_pid_has_exited() -> None:
    # pid_max is at most 2**22; this pid cannot exist.
    assert state_of(ProcessRecord(2**22 + 1, 0, (), "log")) is ProcState.EXITED


def test_a_process_inside_execve_is_still_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-exec the kernel shows an empty cmdline; pid and start time still identify it."""
    ticks, _argv = _me()
    monkeypatch.setattr(procs, "_cmdline", lambda pid: [])
    rec = ProcessRecord(os.getpid(), ticks, ("controlplane", "serve"), "log")
    assert state_of(rec) is ProcState.RUNNING
    assert state_of(ProcessRecord(os.getpid(), ticks + 1, (), "log")) is ProcState.EXITED
