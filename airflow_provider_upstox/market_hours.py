"""Times of day on Indian exchanges: parsing a configured stop time and finding its next instant.

Plain Python (no Airflow import): the stream operator's stop rules and the example DAGs' settings
(:func:`airflow_provider_upstox.assets.configured_stop_at`) both use it.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta, timezone
from typing import Final
from zoneinfo import ZoneInfo

#: The exchanges' time zone; stop times are India wall-clock times.
INDIA: Final = ZoneInfo("Asia/Kolkata")
_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


def parse_stop_at(value: str | time | None) -> time | None:
    """``"15:30"`` / ``"15:30:00"`` / a :class:`~datetime.time` -> time of day (India), ``None`` if unset.

    :raises ValueError: for any other text, naming the expected format.
    """
    if value is None or isinstance(value, time):
        return value
    text = str(value).strip()
    if text in ("", "None", "null"):
        return None
    match = _HHMM.match(text)
    if not match:
        raise ValueError(f"stop_at must be HH:MM or HH:MM:SS in Asia/Kolkata time, got {value!r}")
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    return time(hour, minute, second)  # raises ValueError for 25:00 and the like


def next_stop_deadline(stop_at: time, now: datetime) -> datetime:
    """The first instant at or after *now* whose India wall-clock time is *stop_at* (UTC, aware).

    A task started after today's ``stop_at`` runs until tomorrow's: stopping at once would make a
    continuous DAG spin through empty runs until midnight.
    """
    local_now = now.astimezone(INDIA)
    candidate = datetime.combine(local_now.date(), stop_at, tzinfo=INDIA)
    if candidate <= local_now:
        candidate = datetime.combine(local_now.date() + timedelta(days=1), stop_at, tzinfo=INDIA)
    return candidate.astimezone(timezone.utc)
