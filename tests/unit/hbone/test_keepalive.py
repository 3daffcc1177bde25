"""The PING schedule: every interval, one outstanding at a time, a verdict after the timeout."""

from __future__ import annotations

import pytest

from inmesh.hbone.keepalive import Keepalive


def test_first_ping_is_due_one_interval_after_the_start() -> None:
    k = Keepalive(100.0, interval=10.0, timeout=20.0)
    assert k.next_deadline() == 110.0
    assert k.poll(109.9) is None
    assert k.poll(110.0) is not None


def test_answered_pings_keep_the_interval() -> None:
    k = Keepalive(0.0, interval=10.0, timeout=20.0)
    first = k.poll(10.0)
    assert first is not None
    assert k.next_deadline() == 30.0  # waiting for the ACK
    k.acked(first)
    assert k.next_deadline() == 20.0
    second = k.poll(20.0)
    assert second is not None
    assert second != first


def test_one_ping_outstanding_at_a_time_and_a_late_ack_is_ignored() -> None:
    k = Keepalive(0.0, interval=10.0, timeout=20.0)
    first = k.poll(10.0)
    assert k.poll(25.0) is None  # interval passed, but the first is still unanswered
    k.acked(b"\x00" * 8)  # not ours
    with pytest.raises(TimeoutError, match="no PING ACK within 20 s"):
        k.poll(30.0)
    assert first is not None


def test_an_ack_after_the_next_ping_was_due_sends_the_next_at_once() -> None:
    k = Keepalive(0.0, interval=10.0, timeout=20.0)
    payload = k.poll(10.0)
    assert payload is not None
    k.acked(payload)  # at, say, t=25
    assert k.poll(25.0) is not None
