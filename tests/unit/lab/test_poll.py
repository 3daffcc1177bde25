"""poll_until: deadlines on a fake clock, no real waiting."""

from __future__ import annotations

from inmesh.lab._poll import poll_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_returns_the_first_truthy_value() -> None:
    clock = FakeClock()
    answers = iter([None, False, "ready"])
    assert poll_until(lambda: next(answers), 10, 1, clock=clock, sleep=clock.sleep) == "ready"
    assert clock.sleeps == [1, 1]


def test_gives_up_at_the_deadline_with_a_short_last_sleep() -> None:
    clock = FakeClock()
    assert poll_until(lambda: None, 2.5, 1, clock=clock, sleep=clock.sleep) is None
    assert clock.sleeps == [1, 1, 0.5]


def test_checks_at_least_once_with_zero_timeout() -> None:
    clock = FakeClock()
    calls = []
    assert poll_until(lambda: calls.append(1), 0, 1, clock=clock, sleep=clock.sleep) is None
    assert calls == [1]
