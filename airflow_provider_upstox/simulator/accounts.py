"""The simulator's accounts: who a bearer token belongs to, each with its own market and rate limits.

Real Upstox is one host serving many users, each with their own token, portfolio and rate limits.
The simulator mirrors that: an :class:`Account` is a user id, its own :class:`MarketModel` (seeded
per account), the stream clients connected with its token, and a :class:`RateLimiter` counting the
account's REST requests per API in the windows of ``docs/PROTOCOL.md`` §8 (50 a second, 500 a
minute, 2,000 per 30 minutes). The default single-account simulator is one :class:`Account`;
``UpstoxSimulator(accounts=...)`` adds more. Which account a token belongs to is decided in one
place, ``UpstoxSimulator.account_for`` (:mod:`airflow_provider_upstox.simulator.server`).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from airflow_provider_upstox.client.budget import UPSTOX_LIMITS
from airflow_provider_upstox.simulator.connections import Client
from airflow_provider_upstox.simulator.model import MarketModel

#: (window in seconds, most requests per user and API in it): ``docs/PROTOCOL.md`` §8, the limits
#: the client budgets against (one definition for both sides).
RATE_LIMITS: Final = UPSTOX_LIMITS.windows()
#: How the windows are named in ``/_sim/requests``: ``"1s"``, ``"60s"``, ``"1800s"``.
WINDOW_NAMES: Final = tuple(f"{window:g}s" for window, _ in RATE_LIMITS)


@dataclass
class RateLimiter:
    """One account's requests in Upstox's windows, the simulator's only request counter.

    Limits apply per API path, as Upstox applies them. Two sets of peaks are kept per window: the
    busiest single API (what Upstox would have refused) and the account's requests over every API
    together (what a client's own per-account budget, such as the history backfill's, is judged by).

    :param enforce: answer 429 over a limit (``False``: count only, as the single-account
        simulator does until ``/_sim/requests?enforce=true``, so that fault tests can hammer it).
    """

    enforce: bool = False
    requests: int = 0  #: every request counted, refused ones included
    limited: int = 0  #: requests over a limit (answered 429 when enforcing)
    refused: int = 0  #: requests answered 429
    #: highest count seen in each window of :data:`RATE_LIMITS` for one API
    peaks: list[int] = field(default_factory=lambda: [0] * len(RATE_LIMITS))
    #: highest count seen in each window over every API of the account together
    account_peaks: list[int] = field(default_factory=lambda: [0] * len(RATE_LIMITS))
    _times: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[float] = field(default_factory=deque)

    def hit(self, api: str, now: float) -> bool:
        """Count one request to *api* at *now*; ``False`` when it is over a limit (and enforced)."""
        self.requests += 1
        times = self._times.get(api)
        if times is None:
            times = self._times[api] = deque()
        over = _count(times, now, self.peaks)
        if over:
            self.limited += 1
            if self.enforce:
                times.pop()  # a refused request does not count against the next ones
                self.refused += 1
                return False
        _count(self._all, now, self.account_peaks)
        return True

    def reset(self) -> None:
        """Forget every count and peak (``/_sim/requests?reset=true``); enforcement stays."""
        self.requests = self.limited = self.refused = 0
        self.peaks = [0] * len(RATE_LIMITS)
        self.account_peaks = [0] * len(RATE_LIMITS)
        self._times.clear()
        self._all.clear()

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "limited": self.limited,
            "peak_per_second": self.peaks[0],
            "peak_per_minute": self.peaks[1],
            "peak_per_30_minutes": self.peaks[2],
        }

    def account_counts(self) -> dict[str, Any]:
        """``{total, refused, peaks}`` of the account over every API (``/_sim/requests``)."""
        return {
            "total": self.requests - self.refused,
            "refused": self.refused,
            "peaks": dict(zip(WINDOW_NAMES, self.account_peaks, strict=True)),
        }


def _count(times: deque[float], now: float, peaks: list[int]) -> bool:
    """Add *now* to the sorted *times*, raise *peaks*; whether a window is now over its limit."""
    longest = RATE_LIMITS[-1][0]
    while times and now - times[0] >= longest:
        times.popleft()
    times.append(now)
    over = False
    for i, (window, limit) in enumerate(RATE_LIMITS):
        count = len(times) if window == longest else _count_since(times, now - window)
        if count > peaks[i]:
            peaks[i] = count
        over = over or count > limit
    return over


def _count_since(times: deque[float], start: float) -> int:
    """Entries of the sorted *times* at or after *start* (from the right: recent ones are few)."""
    n = 0
    for t in reversed(times):
        if t < start:
            break
        n += 1
    return n


@dataclass(eq=False)
class Account:
    """One simulated Upstox user: token, user id, market, connected clients, rate limits."""

    token: str
    user_id: str
    model: MarketModel
    rate: RateLimiter
    clients: list[Client] = field(default_factory=list)
    #: market steps owed (fractional); starts at a random phase so accounts do not step in lock step
    debt: float = 0.0
    #: market messages produced (the stream's ground truth count for this account)
    messages: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "connected": len(self.clients),
            "steps": self.model.steps,
            "messages": self.messages,
            **self.rate.as_dict(),
        }


def account_seed(seed: int, index: int) -> int:
    """The market seed of the *index*-th account (0: the primary account, whose seed is *seed*)."""
    return seed if index == 0 else seed * 1_000_003 + index


def new_account(token: str, user_id: str, seed: int, index: int, *, enforce_limits: bool) -> Account:
    return Account(
        token=token,
        user_id=user_id,
        model=MarketModel(account_seed(seed, index), user_id=user_id),
        rate=RateLimiter(enforce=enforce_limits),
        # the primary account starts at phase 0, exactly as the single-account simulator always did
        debt=0.0 if index == 0 else random.Random(f"phase-{seed}-{index}").random(),
    )
