"""The market model: determinism per seed, realistic status paths, consistent positions and holdings."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import msgspec
import pytest

from airflow_provider_upstox.models.updates import Update, parse_india_time, typed_view
from airflow_provider_upstox.simulator import MarketModel, RunningSimulator, run_simulator_in_thread
from airflow_provider_upstox.simulator.instruments import TERMINAL

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
ORDER_FIELDS = [
    "update_type", "user_id", "userId", "exchange", "instrument_token", "instrument_key", "trading_symbol",
    "tradingsymbol", "product", "order_type", "average_price", "price", "trigger_price", "quantity",
    "disclosed_quantity", "pending_quantity", "transaction_type", "order_ref_id", "exchange_order_id",
    "parent_order_id", "validity", "status", "is_amo", "variety", "tag", "exchange_timestamp",
    "status_message", "order_id", "order_request_id", "order_timestamp", "filled_quantity", "guid",
    "placed_by", "status_message_raw",
]  # fmt: skip
POSITION_FIELDS = {
    "update_type", "instrument_token", "instrument_key", "average_price", "buy_value", "overnight_quantity",
    "exchange", "day_buy_value", "day_buy_price", "overnight_buy_amount", "overnight_buy_quantity",
    "day_buy_quantity", "day_sell_value", "day_sell_price", "overnight_sell_amount",
    "overnight_sell_quantity", "day_sell_quantity", "multiplier", "quantity", "product", "sell_value",
    "buy_price", "sell_price",
}  # fmt: skip
HOLDING_FIELDS = {
    "update_type", "instrument_token", "instrument_key", "average_price", "isin", "cnc_used_quantity",
    "collateral_quantity", "collateral_type", "collateral_update_quantity", "company_name", "haircut",
    "product", "quantity", "t1_quantity", "exchange",
}  # fmt: skip
GTT_FIELDS = {"update_type", "type", "exchange", "instrument_token", "quantity", "product", "gtt_order_id",
              "expires_at", "created_at", "rules"}  # fmt: skip
RULE_FIELDS = {"strategy", "status", "trigger_type", "trigger_price", "transaction_type", "message",
               "order_id", "trailing_gap"}  # fmt: skip


def run(seed: int, steps: int) -> tuple[MarketModel, list[Any]]:
    model = MarketModel(seed)
    out = [e for _ in range(steps) for e in model.step()]
    return model, out


@pytest.fixture(scope="module")
def long_run() -> tuple[MarketModel, list[Any]]:
    return run(seed=42, steps=4000)


def test_same_seed_same_history_and_different_seed_differs() -> None:
    a, b, c = run(7, 800)[1], run(7, 800)[1], run(8, 800)[1]
    assert [e.frame for e in a] == [e.frame for e in b]
    assert [e.frame for e in a] != [e.frame for e in c]


def test_same_seed_same_history_through_the_server() -> None:
    states = []
    for _ in range(2):
        with run_simulator_in_thread(token="determinism-token", seed=9, scenario="quiet") as sim:
            sim.control.step(300)
            state = sim.control.state()
            states.append({k: state[k] for k in ("orders", "positions", "holdings", "gtt_orders", "trades")})
    assert states[0] == states[1]
    assert len(states[0]["orders"]) > 20


def test_messages_are_field_for_field_as_documented(long_run: tuple[MarketModel, list[Any]]) -> None:
    _, out = long_run
    for e in out:
        decoded = msgspec.json.decode(e.frame)
        assert decoded == e.data
        if e.update_type == "order":
            assert list(decoded) == ORDER_FIELDS
            assert TIMESTAMP.match(decoded["order_timestamp"])
            assert decoded["exchange_timestamp"] is None or TIMESTAMP.match(decoded["exchange_timestamp"])
        elif e.update_type == "position":
            assert set(decoded) == POSITION_FIELDS
        elif e.update_type == "holding":
            assert set(decoded) == HOLDING_FIELDS
        else:
            assert set(decoded) == GTT_FIELDS
            assert all(set(r) == RULE_FIELDS for r in decoded["rules"])
        typed_view(
            Update(update_type=e.update_type, data=decoded)
        )  # the provider's own validation accepts it


def test_orders_walk_every_status_path(long_run: tuple[MarketModel, list[Any]]) -> None:
    model, _ = long_run
    statuses = Counter(
        m["status"] for run_ in model.orders.values() for m in map(msgspec.json.decode, run_.history)
    )
    for status in (
        "put order req received", "validation pending", "open pending", "open", "trigger pending", "complete",
        "cancel pending", "cancelled", "not cancelled", "rejected", "modify validation pending",
        "modify pending", "modified", "after market order req received", "cancelled after market order",
    ):  # fmt: skip
        assert statuses[status], status
    finals = [r.data for r in model.orders.values()]
    assert any(o["status"] == "complete" and o["order_request_id"] == "2" for o in finals)  # modified
    assert any(o["status"] == "cancelled" and 0 < o["filled_quantity"] < o["quantity"] for o in finals)
    assert any(o["is_amo"] and o["status"] == "complete" for o in finals)


def test_each_order_history_is_monotonic(long_run: tuple[MarketModel, list[Any]]) -> None:
    model, _ = long_run
    for run_ in model.orders.values():
        history = [msgspec.json.decode(f) for f in run_.history]
        times = [parse_india_time(m["order_timestamp"]) for m in history]
        assert times == sorted(times)  # type: ignore[type-var]
        fills = [m["filled_quantity"] for m in history]
        assert fills == sorted(fills)
        assert all(m["status"] not in TERMINAL for m in history[:-1])
        requests = [int(m["order_request_id"]) for m in history]
        assert requests == sorted(requests)
        last = history[-1]
        if last["status"] == "complete":
            assert last["filled_quantity"] == last["quantity"]
            assert last["pending_quantity"] == 0
            assert last["average_price"] > 0


def test_fills_move_positions_and_delivery_fills_move_holdings(
    long_run: tuple[MarketModel, list[Any]],
) -> None:
    model, _ = long_run
    net: Counter[str] = Counter()
    for t in model.trades:
        net[f"{t['instrument_token']}:{t['product']}"] += (
            t["quantity"] if t["transaction_type"] == "BUY" else -t["quantity"]
        )
    assert {k: p["quantity"] for k, p in model.positions.items()} == dict(net)
    for p in model.positions.values():
        assert p["quantity"] == p["overnight_quantity"] + p["day_buy_quantity"] - p["day_sell_quantity"]
    delivery_buys = Counter()
    for t in model.trades:
        if t["product"] == "D" and t["transaction_type"] == "BUY":
            delivery_buys[t["instrument_token"].split("|")[1]] += t["quantity"]
    for isin, bought in delivery_buys.items():
        assert model.holdings[isin]["t1_quantity"] <= bought
        assert model.holdings[isin]["quantity"] >= 0


def test_gtt_rules_trigger_fail_and_expire(long_run: tuple[MarketModel, list[Any]]) -> None:
    model, _ = long_run
    rule_statuses = Counter(r["status"] for g in model.gtt_orders.values() for r in g["rules"])
    assert {"PENDING", "COMPLETED", "CANCELLED", "FAILED"} <= set(rule_statuses)
    triggered = [
        r["order_id"] for g in model.gtt_orders.values() for r in g["rules"] if r["status"] == "COMPLETED"
    ]
    assert triggered
    assert all(oid in model.orders for oid in triggered)
    assert any(r["message"] == "GTT expired" for g in model.gtt_orders.values() for r in g["rules"])
    for g in model.gtt_orders.values():
        assert g["created_at"] <= g["expires_at"]
        assert g["created_at"] > 1_600_000_000_000_000  # epoch microseconds


@pytest.mark.simulator(scenario="busy")
def test_market_runs_on_its_own_clock(simulator: RunningSimulator) -> None:
    import time

    first = simulator.control.counters()["model_steps"]
    time.sleep(0.5)
    assert simulator.control.counters()["model_steps"] > first + 30
    simulator.control.stop_market()
    time.sleep(0.1)
    stopped = simulator.control.counters()["model_steps"]
    time.sleep(0.3)
    assert simulator.control.counters()["model_steps"] == stopped
