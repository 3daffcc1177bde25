"""Running the kernel-facing tools the lab drives (ip, nsenter, nft, conntrack, iptables-save)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from inmesh.errors import KernelError


def run(argv: Sequence[str], *, timeout_s: float = 30.0, check: bool = True) -> str:
    """Run a tool, return its stdout; a failure is a KernelError carrying its stderr."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"
        raise KernelError(f"`{' '.join(argv)}` failed: {detail}")
    return proc.stdout
