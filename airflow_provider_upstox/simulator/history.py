"""Order trades and per-account request counting (``docs/PROTOCOL.md`` §8).

- ``GET /v2/order/trades?order_id=``: the fills of one order, in Upstox's shape (the same objects as
  the day's trade book, ``/v2/order/trades/get-trades-for-day``, which :mod:`.rest` answers together
  with ``/v2/order/history``). The model holds one trading day, so every order, history and fill
  it answers is of the current day; an unknown order id answers 400 ``UDAPI100010``.
- :class:`RequestLog`: every standard-API request (authorize and REST reads) counted per account in
  Upstox's three windows (1 s, 1 min, 30 min), with the peak each window ever reached, so a test can
  check that a client never went over 50/500/2,000; with ``enforce`` on, a request over a limit
  answers 429 ``UDAPI10005`` like Upstox.
- ``GET /_sim/requests``: the log (peaks, totals, 429s); ``POST /_sim/requests?enforce=true``
  switches enforcement, ``reset=true`` clears the counts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.model import MarketModel
from airflow_provider_upstox.simulator.routing import ANY_METHOD, HttpRequest, Route

#: Upstox's standard-API limits per user: (window seconds, most requests).
UPSTOX_WINDOWS: Final = ((1.0, 50), (60.0, 500), (1800.0, 2000))
ORDER_TRADES_PATH: Final = "/v2/order/trades"
REQUESTS_PATH: Final = "/_sim/requests"


@dataclass
class _Account:
    times: deque[float] = field(default_factory=deque)
    total: int = 0
    refused: int = 0
    peaks: dict[str, int] = field(default_factory=dict)


class RequestLog:
    """Per-account sliding-window request counts (see the module docstring)."""

    def __init__(self, *, enforce: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.enforce = enforce
        self._clock = clock
        self._accounts: dict[str, _Account] = {}

    def admit(self, account: str) -> Response | None:
        """Count one request of *account*; the 429 to send when enforcing and over a limit."""
        entry = self._accounts.setdefault(account, _Account())
        now = self._clock()
        times = entry.times
        while times and times[0] <= now - UPSTOX_WINDOWS[-1][0]:
            times.popleft()
        counts = {f"{w:g}s": sum(1 for t in times if t > now - w) + 1 for w, _ in UPSTOX_WINDOWS}
        if self.enforce and any(counts[f"{w:g}s"] > n for w, n in UPSTOX_WINDOWS):
            entry.refused += 1
            return h.error(429, h.TOO_MANY_REQUESTS)
        times.append(now)
        entry.total += 1
        for name, count in counts.items():
            entry.peaks[name] = max(entry.peaks.get(name, 0), count)
        return None

    def snapshot(self) -> dict[str, Any]:
        """``{"enforce": bool, "limits": {...}, "accounts": {id: {total, refused, peaks}}}``."""
        return {
            "enforce": self.enforce,
            "limits": {f"{w:g}s": n for w, n in UPSTOX_WINDOWS},
            "accounts": {
                account: {"total": e.total, "refused": e.refused, "peaks": dict(e.peaks)}
                for account, e in self._accounts.items()
            },
        }

    def reset(self) -> None:
        self._accounts.clear()


class HistoryContext(Protocol):
    """What these routes need from the simulator."""

    @property
    def model(self) -> MarketModel: ...
    @property
    def requests(self) -> RequestLog: ...
    async def guard(self, kind: str, request: Request) -> Response | None: ...


def order_trades(m: MarketModel, order_id: str) -> list[dict[str, Any]] | None:
    """The fills of *order_id* (``None`` for an order the day does not have)."""
    if order_id not in m.orders:
        return None
    return [dict(t) for t in m.trades if t["order_id"] == order_id]


def routes(ctx: HistoryContext) -> list[Route]:
    async def trades(req: HttpRequest) -> Response:
        refused = await ctx.guard("rest", req.request)
        if refused is not None:
            return refused
        order_id = (req.query.get("order_id") or [""])[0]
        if not order_id:
            return h.error(400, h.MISSING_PARAM)
        found = order_trades(ctx.model, order_id)
        return h.error(400, h.ORDER_NOT_FOUND) if found is None else h.success(found)

    async def requests(req: HttpRequest) -> Response:
        log = ctx.requests
        if req.method == "POST":
            values = {k: (v or [""])[0].strip().lower() for k, v in req.query.items()}
            if "enforce" in values:
                if values["enforce"] not in ("true", "false"):
                    return h.json_response(400, {"error": "enforce must be true or false"})
                log.enforce = values["enforce"] == "true"
            if values.get("reset") == "true":
                log.reset()
        return h.json_response(200, log.snapshot())

    return [
        Route(ORDER_TRADES_PATH, trades),
        Route(REQUESTS_PATH, requests, frozenset({"GET", "POST"}) & ANY_METHOD),
    ]
