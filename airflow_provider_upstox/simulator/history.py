"""Order trades and per-account request counting (``docs/PROTOCOL.md`` §8).

- ``GET /v2/order/trades?order_id=``: the fills of one order, in Upstox's shape (the same objects as
  the day's trade book, ``/v2/order/trades/get-trades-for-day``, which :mod:`.rest` answers together
  with ``/v2/order/history``). The model holds one trading day, so every order, history and fill
  it answers is of the current day; an unknown order id answers 400 ``UDAPI100010``.
- :class:`RequestLog`: every standard-API request (authorize and REST reads) as each account's
  :class:`~.accounts.RateLimiter` counts it in Upstox's three windows (1 s, 1 min, 30 min), with
  the peak each window ever reached over all of the account's APIs, so a test can check that a
  client never went over 50/500/2,000; with ``enforce`` on, a request over a limit of its API
  answers 429 ``UDAPI10005`` like Upstox.
- ``GET /_sim/requests``: the log (peaks, totals, 429s); ``POST /_sim/requests?enforce=true``
  switches enforcement, ``reset=true`` clears the counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.accounts import RATE_LIMITS, WINDOW_NAMES, Account
from airflow_provider_upstox.simulator.model import MarketModel
from airflow_provider_upstox.simulator.routing import ANY_METHOD, HttpRequest, Route

ORDER_TRADES_PATH: Final = "/v2/order/trades"
REQUESTS_PATH: Final = "/_sim/requests"


class RequestLog:
    """``/_sim/requests``: every account's :class:`~.accounts.RateLimiter`, read and switched together.

    It holds no counts of its own: the accounts' limiters are the simulator's one request counter.

    :param accounts: the simulator's accounts now (they are replaced when the simulator resets).
    :param enforce: whether accounts answer 429 over a limit; applied to every account, also to
        those added later through :attr:`enforce`.
    """

    def __init__(self, accounts: Callable[[], Iterable[Account]], *, enforce: bool = False) -> None:
        self._accounts = accounts
        self._enforce = enforce

    @property
    def enforce(self) -> bool:
        return self._enforce

    @enforce.setter
    def enforce(self, value: bool) -> None:
        self._enforce = value
        for account in self._accounts():
            account.rate.enforce = value

    def snapshot(self) -> dict[str, Any]:
        """``{"enforce": bool, "limits": {...}, "accounts": {id: {total, refused, peaks}}}``."""
        return {
            "enforce": self._enforce,
            "limits": {name: n for name, (_, n) in zip(WINDOW_NAMES, RATE_LIMITS, strict=True)},
            "accounts": {a.user_id: a.rate.account_counts() for a in self._accounts()},
        }

    def reset(self) -> None:
        for account in self._accounts():
            account.rate.reset()


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
