"""REST reads agree with what the stream sent; ``/_sim/state`` is the ground truth for both."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_provider_upstox.simulator import RunningSimulator
from tests.simulator.conftest import authorize, open_stream, recv_until_quiet, rest

pytestmark = pytest.mark.simulator(scenario="quiet", seed=5)


def _data(sim: RunningSimulator, path: str, **params: Any) -> Any:
    r = rest(sim, path, **params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    return body["data"]


KEYS = {
    "order": lambda m: m["order_id"],
    "position": lambda m: f"{m['instrument_token']}:{m['product']}",
    "holding": lambda m: m["isin"],
    "gtt_order": lambda m: m["gtt_order_id"],
}


def _strip(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "update_type"}


def test_every_rest_read_answers_success_shape(simulator: RunningSimulator) -> None:
    simulator.control.step(300)
    assert _data(simulator, "/v2/user/profile")["user_id"] == "AB1234"
    book = _data(simulator, "/v2/order/retrieve-all")
    assert book
    assert isinstance(book, list)
    order_id = book[0]["order_id"]
    assert _data(simulator, "/v2/order/details", order_id=order_id) == book[0]
    history = _data(simulator, "/v2/order/history", order_id=order_id)
    assert history[-1] == book[0]
    assert history[0]["status"] in ("put order req received", "after market order req received")
    assert isinstance(_data(simulator, "/v2/order/trades/get-trades-for-day"), list)
    assert isinstance(_data(simulator, "/v2/portfolio/short-term-positions"), list)
    assert _data(simulator, "/v2/portfolio/long-term-holdings")  # seeded holdings exist from the start
    gtts = _data(simulator, "/v3/order/gtt")
    assert gtts
    assert _data(simulator, "/v3/order/gtt", gtt_order_id=gtts[0]["gtt_order_id"]) == [gtts[0]]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v2/order/details", {"order_id": "nope"}),
        ("/v2/order/history", {}),
        ("/v3/order/gtt", {"gtt_order_id": "x"}),
    ],
)
def test_bad_rest_parameters_are_400_error_bodies(
    simulator: RunningSimulator, path: str, params: dict[str, str]
) -> None:
    r = rest(simulator, path, **params)
    assert r.status_code == 400
    assert r.json()["errors"][0]["error_code"]


async def test_rest_and_stream_agree_at_quiescence(simulator: RunningSimulator) -> None:
    url = authorize(simulator)
    async with open_stream(url) as ws:
        # the market runs on its own clock while we are connected; the async control client keeps
        # this loop (and so the socket) reading while the simulator drains its queues
        await simulator.acontrol.start_market(rate=400)
        await asyncio.sleep(1.0)
        assert (await simulator.acontrol.quiesce())["drained"] is True
        received = await recv_until_quiet(ws)
    assert len(received) > 100

    last: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in KEYS}
    per_order: dict[str, list[dict[str, Any]]] = {}
    for m in received:
        last[m["update_type"]][KEYS[m["update_type"]](m)] = _strip(m)
        if m["update_type"] == "order":
            per_order.setdefault(m["order_id"], []).append(_strip(m))

    book = {o["order_id"]: o for o in _data(simulator, "/v2/order/retrieve-all")}
    assert book == last["order"]
    positions = _data(simulator, "/v2/portfolio/short-term-positions")
    assert {KEYS["position"](p): p for p in positions} == last["position"]
    holdings = {h["isin"]: h for h in _data(simulator, "/v2/portfolio/long-term-holdings")}
    for isin, row in last["holding"].items():  # seeded holdings that never moved were never streamed
        assert holdings[isin] == row
    assert {g["gtt_order_id"]: g for g in _data(simulator, "/v3/order/gtt")} == last["gtt_order"]
    for order_id in list(book)[:20]:
        assert _data(simulator, "/v2/order/history", order_id=order_id) == per_order[order_id]

    state = simulator.control.state()
    assert state["counters"]["sent"] == len(received) == state["counters"]["model_messages"]
    assert {oid: [_strip(m) for m in o["history"]] for oid, o in state["orders"].items()} == per_order
    trades = _data(simulator, "/v2/order/trades/get-trades-for-day")
    assert sum(t["quantity"] for t in trades) == sum(o["filled_quantity"] for o in book.values())


async def test_updates_while_no_client_is_connected_are_missed(simulator: RunningSimulator) -> None:
    produced = simulator.control.step(50)["produced"]
    assert simulator.control.counters()["missed_while_away"] == produced
    async with open_stream(authorize(simulator)) as ws:
        assert await recv_until_quiet(ws, quiet=0.3) == []  # no replay on connect
        more = (await simulator.acontrol.step(20))["produced"]
        assert len(await recv_until_quiet(ws)) == more
    assert simulator.control.counters()["missed_while_away"] == produced
