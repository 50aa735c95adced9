"""The backfill's rate budget on a fake clock: no window ever holds more than its limit."""

from __future__ import annotations

import pytest

from airflow_provider_upstox.client.budget import (
    BACKFILL_SHARE,
    UPSTOX_LIMITS,
    Limits,
    RateBudget,
    budget_for,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def _max_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


def test_every_window_holds_at_most_its_limit() -> None:
    clock = FakeClock()
    limits = Limits(per_second=5, per_minute=12, per_30_minutes=20)
    budget = RateBudget(limits, clock=clock, sleep=clock.sleep)
    grants = []
    for _ in range(20):
        assert budget.acquire()
        grants.append(clock.now)
    assert _max_in_window(grants, 1.0) <= 5
    assert _max_in_window(grants, 60.0) <= 12
    assert grants[-1] - grants[0] >= 60.0  # the minute window forced a wait
    assert budget.wait_time() > 1500  # the 30-minute budget is spent
    assert budget.acquire(max_wait=10) is False  # a caller with a deadline is told, not blocked
    assert budget.granted == 20


def test_the_backfill_share_leaves_headroom_under_upstox_limits() -> None:
    for ours, theirs in zip(BACKFILL_SHARE.windows(), UPSTOX_LIMITS.windows(), strict=True):
        assert ours[0] == theirs[0]
        assert ours[1] <= theirs[1] * 0.5
    assert budget_for("AB1234") is budget_for("AB1234")
    assert budget_for("AB1234") is not budget_for("CD5678")
    with pytest.raises(ValueError, match="at least one request"):
        RateBudget(Limits(0, 1, 1))
