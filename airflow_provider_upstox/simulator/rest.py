"""The REST reads of ``docs/PROTOCOL.md`` §4 and §8, answered from the market model's current state.

They read the same dicts the stream messages were encoded from, so a REST answer always reflects
every message the model has produced so far (sent, queued or missed alike).
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.model import MarketModel
from airflow_provider_upstox.simulator.routing import HttpRequest, Route


class RestContext(Protocol):
    """What the REST reads need from the simulator: the market of the request's account."""

    def model_for(self, request: Request) -> MarketModel:
        """The current model of the account the request's token belongs to (a reset replaces it)."""

    async def guard(self, kind: str, request: Request) -> Response | None:
        """Delay, injected failure or 401 for a request of *kind*; ``None`` to go on."""


REST_PATHS: Final = frozenset(
    {
        "/v2/user/profile",
        "/v2/order/retrieve-all",
        "/v2/order/details",
        "/v2/order/history",
        "/v2/order/trades/get-trades-for-day",
        "/v2/portfolio/short-term-positions",
        "/v2/portfolio/long-term-holdings",
        "/v3/order/gtt",
    }
)


def routes(ctx: RestContext) -> list[Route]:
    """One GET route per REST read, each behind the simulator's guard (faults, token)."""

    async def read(req: HttpRequest) -> Response:
        refused = await ctx.guard("rest", req.request)
        if refused is not None:
            return refused
        return rest_read(ctx.model_for(req.request), req.path, req.query)

    return [Route(path, read) for path in sorted(REST_PATHS)]


def rest_read(m: MarketModel, path: str, query: dict[str, list[str]]) -> Response:
    """Answer one REST read (*path* is one of :data:`REST_PATHS`; auth is checked by the caller)."""
    if path == "/v2/user/profile":
        return h.success(_profile(m.user_id))
    if path == "/v2/order/retrieve-all":
        return h.success(m.order_book())
    if path == "/v2/order/trades/get-trades-for-day":
        return h.success(list(m.trades))
    if path == "/v2/portfolio/short-term-positions":
        return h.success(m.position_rows())
    if path == "/v2/portfolio/long-term-holdings":
        return h.success(m.holding_rows())
    if path == "/v3/order/gtt":
        gtt_id = (query.get("gtt_order_id") or [""])[0] or None
        rows = m.gtt_rows(gtt_id)
        return h.error(400, h.GTT_NOT_FOUND) if gtt_id and not rows else h.success(rows)
    order_id = (query.get("order_id") or [""])[0]
    if not order_id:
        return h.error(400, h.MISSING_PARAM)
    found = m.order_details(order_id) if path == "/v2/order/details" else m.order_history(order_id)
    return h.error(400, h.ORDER_NOT_FOUND) if found is None else h.success(found)


def _profile(user_id: str) -> dict[str, Any]:
    return {
        "email": "trader@example.com",
        "exchanges": ["NSE", "BSE", "NFO", "MCX"],
        "products": ["D", "I", "CO", "MTF"],
        "broker": "UPSTOX",
        "user_id": user_id,
        "user_name": "Simulated Trader",
        "order_types": ["MARKET", "LIMIT", "SL", "SL-M"],
        "user_type": "individual",
        "poa": False,
        "ddpi": True,
        "is_active": True,
    }
