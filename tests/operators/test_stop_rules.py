"""Stop rules of the continuous stream task (pure functions)."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pytest

from airflow_provider_upstox.market_hours import next_stop_deadline, parse_stop_at
from airflow_provider_upstox.operators.stop_rules import StopRules, StreamProgress, optional_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [("15:30", time(15, 30)), (" 9:05:07 ", time(9, 5, 7)), ("", None), ("None", None), (None, None)],
)
def test_parse_stop_at(text: str | None, expected: time | None) -> None:
    assert parse_stop_at(text) == expected


@pytest.mark.parametrize("text", ["1530", "25:00", "15:30pm", "noon"])
def test_parse_stop_at_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"stop_at|hour"):
        parse_stop_at(text)


def test_deadline_today_or_tomorrow_in_india() -> None:
    # 09:00 UTC = 14:30 IST: today's 15:30 IST = 10:00 UTC.
    now = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)
    assert next_stop_deadline(time(15, 30), now) == datetime(2025, 3, 3, 10, 0, tzinfo=timezone.utc)
    # 11:00 UTC = 16:30 IST: past today's close -> tomorrow's.
    later = datetime(2025, 3, 3, 11, 0, tzinfo=timezone.utc)
    assert next_stop_deadline(time(15, 30), later) == datetime(2025, 3, 4, 10, 0, tzinfo=timezone.utc)


def test_optional_number() -> None:
    assert optional_number("30", "x") == 30.0
    assert optional_number("None", "x") is None
    assert optional_number(None, "x") is None
    with pytest.raises(ValueError, match="max_batches"):
        optional_number("2.5", "max_batches", integer=True)
    with pytest.raises(ValueError, match="x must"):
        optional_number("-1", "x")


def test_rules() -> None:
    p = StreamProgress(started_at_us=0, idle_since_us=0, deadline_us=100_000_000)
    rules = StopRules(max_batches=2, stop_after_idle=10.0)
    assert rules.reason_to_stop(p, 5_000_000) is None
    assert rules.wake_after(p, 5_000_000) == pytest.approx(5.0)
    assert "idle" in (rules.reason_to_stop(p, 10_000_000) or "")
    p.batches = 2
    assert "max_batches" in (rules.reason_to_stop(p, 0) or "")
    p.batches, p.idle_since_us = 0, 99_000_000
    assert rules.reason_to_stop(p, 100_000_000) == "stop_at reached"
    assert StopRules().wake_after(StreamProgress(0, 0), 0) is None
    assert StreamProgress.from_json({**p.to_json(), "unknown": 1}) == p
