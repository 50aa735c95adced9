"""A per-account request budget under Upstox's rate limits (``docs/PROTOCOL.md`` §8).

Upstox counts the standard APIs per user in three windows at once: 50 requests a second, 500 a
minute, 2,000 per 30 minutes, and answers 429 ``UDAPI10005`` beyond them (repeated excess may
suspend the app). Everything an account does shares them: the stream's authorize and snapshot
reads on every reconnect, the reconciliation, the user's own scripts. A backfill that may read two
calls per order for hundreds of orders therefore takes only a *share* of each window
(:data:`BACKFILL_SHARE`: 20 a second, 200 a minute, 800 per 30 minutes by default), leaving the
rest as headroom.

:class:`RateBudget` keeps the timestamps of the calls it granted in each window (a sliding log, as
exact as the limit itself, no token refill rounding) and, before a call, waits until every window
has room. It is shared per account within a process (:func:`budget_for`), thread-safe, and never
blocks longer than the caller allows: :meth:`RateBudget.acquire` returns ``False`` instead, so a
backfill step can stop and resume later from its queue in the database.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Limits:
    """Requests allowed per second, per minute and per 30 minutes."""

    per_second: int
    per_minute: int
    per_30_minutes: int

    def windows(self) -> tuple[tuple[float, int], ...]:
        return ((1.0, self.per_second), (60.0, self.per_minute), (1800.0, self.per_30_minutes))


#: Upstox's documented per-user limits of the standard APIs.
UPSTOX_LIMITS: Final = Limits(50, 500, 2000)
#: What the history backfill may use of them (the rest is headroom for everything else).
BACKFILL_SHARE: Final = Limits(20, 200, 800)


class RateBudget:
    """Sliding-window request budget (see the module docstring).

    :param limits: the most requests per window.
    :param clock: monotonic seconds (tests pass a fake one).
    :param sleep: how to wait (tests pass a fake one).
    """

    def __init__(
        self,
        limits: Limits = BACKFILL_SHARE,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for seconds, count in limits.windows():
            if count < 1:
                raise ValueError(
                    f"a rate limit must allow at least one request per {seconds:g}s, got {count}"
                )
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._granted: deque[float] = deque()  # grant times, oldest first (max window only)
        self.granted = 0

    def wait_time(self) -> float:
        """Seconds until one more request fits every window (0 when it fits now)."""
        with self._lock:
            return self._wait_locked(self._clock())

    def _wait_locked(self, now: float) -> float:
        log = self._granted
        horizon = now - 1800.0
        while log and log[0] <= horizon:
            log.popleft()
        wait = 0.0
        n = len(log)
        for seconds, count in self.limits.windows():
            # the grants inside this window are the newest ones: count them from the right
            inside = n - _first_after(log, now - seconds)
            if inside >= count:
                oldest_blocking = log[n - count]  # the count-th newest grant
                wait = max(wait, oldest_blocking + seconds - now)
        return wait

    def acquire(self, max_wait: float = float("inf")) -> bool:
        """Take one request from the budget, waiting for room up to *max_wait* seconds.

        :returns: ``False`` (nothing taken) when room would come only after *max_wait*.
        """
        deadline = self._clock() + max_wait
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_locked(now)
                if wait <= 0:
                    self._granted.append(now)
                    self.granted += 1
                    return True
            if now + wait > deadline:
                return False
            self._sleep(wait)


def _first_after(log: deque[float], since: float) -> int:
    """Index of the first grant after *since* in the ascending *log* (binary search)."""
    lo, hi = 0, len(log)
    while lo < hi:
        mid = (lo + hi) // 2
        if log[mid] > since:
            hi = mid
        else:
            lo = mid + 1
    return lo


_BUDGETS: dict[tuple[str, Limits], RateBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(account: str, limits: Limits = BACKFILL_SHARE) -> RateBudget:
    """The process-wide budget of *account* (one per account and limits)."""
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get((account, limits))
        if budget is None:
            budget = _BUDGETS[(account, limits)] = RateBudget(limits)
        return budget


def forget_budgets() -> None:
    """Drop every process-wide budget (a test harness whose rows simulate fresh accounts that
    happen to share a user id)."""
    with _BUDGETS_LOCK:
        _BUDGETS.clear()
