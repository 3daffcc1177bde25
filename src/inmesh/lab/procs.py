"""Processes the lab starts and stops: detached daemons recognised by pid, start time, argv.

A daemon is double-forked (like a container runtime's shim): it belongs to no lab command, has
its own session, and writes to a log file. `stop` signals only a pid whose start time and
command line still match the record, so a recycled pid is never hit.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from inmesh.errors import KernelError
from inmesh.lab._poll import poll_until
from inmesh.lab.state import ProcessRecord

# Runs in a fresh single-threaded interpreter, so fork() there is safe. The grandchild gets its
# own session, /dev/null as stdin and the log as stdout/stderr, then execs the command.
_SPAWNER = """
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
pid = os.fork()
if pid == 0:
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        os.write(2, f"inmesh lab: cannot exec {sys.argv[2]}: {exc}\\n".encode())
        os._exit(127)
with open(f"/proc/{pid}/stat", "rb") as f:
    ticks = f.read().rsplit(b")", 1)[1].split()[19].decode()
print(pid, ticks)
"""


class ProcState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"
    """Gone, a zombie, or its pid now belongs to another process."""


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of ``pid``, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0].decode(), int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def contains_run(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """True if ``needle`` occurs in ``haystack`` as a contiguous run."""
    n = len(needle)
    return any(list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def state_of(rec: ProcessRecord) -> ProcState:
    stat = _read_stat(rec.pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != rec.start_ticks:
        return ProcState.EXITED
    # Between fork and exec the cmdline is the spawner's, which holds the argv too. Inside
    # execve (nsenter -> script -> python: three of them) the new image's argument area is not
    # set up yet and the cmdline reads empty; pid and start time already say it is ours.
    cmdline = _cmdline(rec.pid)
    if not cmdline or contains_run(cmdline, rec.signature):
        return ProcState.RUNNING
    return ProcState.EXITED


def is_running(rec: ProcessRecord | None) -> bool:
    return rec is not None and state_of(rec) is ProcState.RUNNING


def running_pid(rec: ProcessRecord | None) -> int | None:
    """The recorded pid if that process is still ours and running."""
    return rec.pid if rec is not None and state_of(rec) is ProcState.RUNNING else None


def spawn_detached(argv: Sequence[str], log: Path, signature: Sequence[str]) -> ProcessRecord:
    """Start ``argv`` as a daemon writing to ``log``; return its record once it is forked."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _SPAWNER, str(log), *argv],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        pid_s, ticks_s = out.stdout.split()
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        raise KernelError(f"cannot start {' '.join(argv)}: {exc}") from exc
    return ProcessRecord(int(pid_s), int(ticks_s), tuple(signature), str(log))


def stop(rec: ProcessRecord, grace_s: float, poll_s: float) -> str:
    """SIGTERM, then SIGKILL after ``grace_s``. Returns what happened, for the report."""
    if state_of(rec) is not ProcState.RUNNING:
        return "not running"
    if not _signal(rec.pid, signal.SIGTERM):
        return "not running"
    if poll_until(lambda: state_of(rec) is ProcState.EXITED, grace_s, poll_s):
        return "stopped"
    if state_of(rec) is ProcState.RUNNING:
        _signal(rec.pid, signal.SIGKILL)
        poll_until(lambda: state_of(rec) is ProcState.EXITED, grace_s, poll_s)
    return "killed"


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def log_tail(path: str, lines: int = 5) -> str:
    """The last lines of a process log, for error messages."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""
