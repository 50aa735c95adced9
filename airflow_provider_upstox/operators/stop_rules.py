"""When a continuous portfolio stream task stops: pure functions of its recorded progress and the clock.

Kept apart from the operator so the rules are tested without Airflow, and so the same numbers
decide both "stop now?" and "how long may the next deferral wait before we must look again?".
Stop times of day are parsed by :mod:`airflow_provider_upstox.market_hours`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def optional_number(value: Any, name: str, *, integer: bool = False) -> float | None:
    """Coerce a templated value (``"30"``, ``"None"``, ``""``, ``30``) to a positive number or ``None``.

    :raises ValueError: naming the parameter for negative or non-numeric values.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if number < 0 or (integer and number != int(number)):
        raise ValueError(f"{name} must be a non-negative {'integer' if integer else 'number'}, got {value!r}")
    return number


@dataclass
class StreamProgress:
    """What a stream task has done so far in this try; stored in the database between deferrals."""

    started_at_us: int
    idle_since_us: int
    deadline_us: int | None = None
    batches: int = 0
    updates: int = 0
    events: int = 0
    last_event_at_us: int | None = None
    account: str | None = None
    rows_by_type: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    #: the highest update seq committed in this try (``0``: none), passed to each re-deferral's trigger
    acked_seq: int = 0
    #: the refusal episode the stream is in (a ``TokenWaitEvent`` payload), passed to each trigger
    token_wait: dict[str, Any] | None = None
    #: refusal episodes seen in this try
    token_refusals: int = 0
    #: a live order update showed a fill since the day's trade book was last read (history backfill)
    fills_pending: bool = False
    #: when the trade book was last read (epoch µs; ``0``: not in this try)
    trade_book_at_us: int = 0
    #: fingerprint of a token Upstox refused to the history backfill: no backfill call until the
    #: connection holds another one (the stream may not have noticed the refusal yet)
    backfill_refused_token: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamProgress:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class StopRules:
    """The configured stop conditions; ``None`` disables one."""

    max_batches: int | None = None
    stop_after_idle: float | None = None

    def reason_to_stop(self, progress: StreamProgress, now_us: int) -> str | None:
        """Why the task should stop now, or ``None`` to keep streaming."""
        if self.max_batches is not None and progress.batches >= self.max_batches:
            return f"max_batches={self.max_batches} reached"
        if progress.deadline_us is not None and now_us >= progress.deadline_us:
            return "stop_at reached"
        if (
            self.stop_after_idle is not None
            and now_us - progress.idle_since_us >= self.stop_after_idle * 1_000_000
        ):
            return f"idle for {self.stop_after_idle:g} s"
        return None

    def wake_after(self, progress: StreamProgress, now_us: int) -> float | None:
        """Seconds the next deferral may last before the stop conditions must be looked at again.

        Used as the deferral's timeout: on a silent market no trigger event comes, so Airflow's
        trigger timeout is what wakes the task to stop on time. At least one second.
        """
        waits: list[float] = []
        if progress.deadline_us is not None:
            waits.append((progress.deadline_us - now_us) / 1e6)
        if self.stop_after_idle is not None:
            waits.append((progress.idle_since_us + self.stop_after_idle * 1e6 - now_us) / 1e6)
        return max(1.0, min(waits)) if waits else None
