"""Polling with a deadline: the lab's one way of waiting for a condition (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    check: Callable[[], T | None],
    timeout_s: float,
    interval_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """Call ``check`` until it returns something other than None/False, or the deadline passes.

    Returns that value, or None on timeout. ``check`` runs at least once.
    """
    deadline = clock() + timeout_s
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        remaining = deadline - clock()
        if remaining <= 0:
            return None
        sleep(min(interval_s, remaining))
