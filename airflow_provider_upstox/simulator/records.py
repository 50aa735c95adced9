"""Builders and arithmetic of the simulated account's records.

Status paths an order walks (``docs/PROTOCOL.md`` §2), Upstox-shaped position, holding and GTT
objects, and the fill arithmetic that keeps positions and holdings full states (not deltas).
Used only by :mod:`airflow_provider_upstox.simulator.model`.
"""

from __future__ import annotations

import random
from typing import Any, Final

from airflow_provider_upstox.simulator import instruments as st
from airflow_provider_upstox.simulator.instruments import Instrument

OUTCOMES: Final = (
    "complete",
    "partial",
    "cancelled",
    "partial_cancelled",
    "rejected",
    "modified",
    "not_cancelled",
)
OUTCOME_WEIGHTS: Final = (40, 14, 10, 4, 9, 15, 4)


def plan(outcome: str, order_type: str, rng: random.Random) -> list[dict[str, Any]]:
    """The status path an order will walk (``docs/PROTOCOL.md`` §2); fills are ``part`` or ``rest``."""
    if outcome == "amo":
        path: list[dict[str, Any]] = []
        if rng.random() < 0.4:
            path.append({"status": st.AMO_RECEIVED, "modify": True})
        if rng.random() < 0.4:
            return [*path, {"status": st.AMO_CANCELLED}]
        return [
            *path,
            {"status": st.OPEN_PENDING},
            {"status": st.OPEN, "exchange": True},
            {"status": st.COMPLETE, "fill": "rest"},
        ]
    head: list[dict[str, Any]] = [{"status": st.VALIDATION_PENDING}]
    if outcome == "rejected":
        return [*head, {"status": st.REJECTED, "message": rng.choice(st.REJECTION_MESSAGES)}]
    head.append({"status": st.OPEN_PENDING})
    if order_type in ("SL", "SL-M"):
        head.append({"status": st.TRIGGER_PENDING, "exchange": True})
    head.append({"status": st.OPEN, "exchange": True})
    if outcome == "complete":
        return [*head, {"status": st.COMPLETE, "fill": "rest"}]
    if outcome == "partial":
        parts = [{"status": st.OPEN, "fill": "part"} for _ in range(rng.randint(1, 3))]
        return [*head, *parts, {"status": st.COMPLETE, "fill": "rest"}]
    if outcome == "cancelled":
        return [*head, {"status": st.CANCEL_PENDING}, {"status": st.CANCELLED}]
    if outcome == "partial_cancelled":
        return [
            *head,
            {"status": st.OPEN, "fill": "part"},
            {"status": st.CANCEL_PENDING},
            {"status": st.CANCELLED},
        ]
    if outcome == "modified":
        modify: list[dict[str, Any]] = [
            {"status": st.MODIFY_VALIDATION_PENDING, "modify": True},
            {"status": st.MODIFY_PENDING},
            {"status": st.MODIFIED},
            {"status": st.OPEN},
        ]
        return [*head, *modify, {"status": st.COMPLETE, "fill": "rest"}]
    # not_cancelled: the cancel request loses the race against the fill.
    return [
        *head,
        {"status": st.CANCEL_PENDING},
        {"status": st.NOT_CANCELLED, "message": "Order already filled"},
        {"status": st.COMPLETE, "fill": "rest"},
    ]


def rest_row(data: dict[str, Any]) -> dict[str, Any]:
    """A REST row: the stream object without ``update_type`` (REST reads carry no envelope)."""
    return {k: v for k, v in data.items() if k != "update_type"}


def copy_gtt(gtt: dict[str, Any]) -> dict[str, Any]:
    return {**gtt, "rules": [dict(r) for r in gtt["rules"]]}


def rule(strategy: str, trigger: str, price: float, side: str, gap: float | None) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "status": "PENDING",
        "trigger_type": trigger,
        "trigger_price": price,
        "transaction_type": side,
        "message": "",
        "order_id": None,
        "trailing_gap": gap,
    }


def holding(inst: Instrument, qty: int, avg: float) -> dict[str, Any]:
    return {
        "update_type": "holding",
        "instrument_token": inst.instrument_token,
        "instrument_key": inst.instrument_token,
        "average_price": avg,
        "isin": inst.isin,
        "cnc_used_quantity": 0,
        "collateral_quantity": 0,
        "collateral_type": "WC",
        "collateral_update_quantity": 0,
        "company_name": inst.company_name,
        "haircut": inst.haircut,
        "product": "D",
        "quantity": qty,
        "t1_quantity": 0,
        "exchange": inst.exchange,
    }


def position(inst: Instrument, product: str) -> dict[str, Any]:
    """A flat position: the state before its first fill of the day."""
    return {
        "update_type": "position",
        "instrument_token": inst.instrument_token,
        "instrument_key": inst.instrument_token,
        "average_price": 0,
        "buy_value": 0,
        "overnight_quantity": 0,
        "exchange": inst.segment,
        "day_buy_value": 0,
        "day_buy_price": 0,
        "overnight_buy_amount": 0,
        "overnight_buy_quantity": 0,
        "day_buy_quantity": 0,
        "day_sell_value": 0,
        "day_sell_price": 0,
        "overnight_sell_amount": 0,
        "overnight_sell_quantity": 0,
        "day_sell_quantity": 0,
        "multiplier": 1,
        "quantity": 0,
        "product": product,
        "sell_value": 0,
        "buy_price": 0,
        "sell_price": 0,
    }


def apply_position_fill(pos: dict[str, Any], buy: bool, qty: int, price: float) -> None:
    """Full-state position arithmetic: day and overnight legs, net quantity, average prices."""
    side = "buy" if buy else "sell"
    pos[f"day_{side}_quantity"] += qty
    pos[f"day_{side}_value"] = round(pos[f"day_{side}_value"] + qty * price, 2)
    pos[f"day_{side}_price"] = round(pos[f"day_{side}_value"] / pos[f"day_{side}_quantity"], 4)
    for s in ("buy", "sell"):
        total_qty = pos[f"overnight_{s}_quantity"] + pos[f"day_{s}_quantity"]
        pos[f"{s}_value"] = round(pos[f"overnight_{s}_amount"] + pos[f"day_{s}_value"], 2)
        pos[f"{s}_price"] = round(pos[f"{s}_value"] / total_qty, 4) if total_qty else 0
    pos["quantity"] = pos["overnight_quantity"] + pos["day_buy_quantity"] - pos["day_sell_quantity"]
    net = pos["quantity"]
    pos["average_price"] = pos["buy_price"] if net > 0 else pos["sell_price"] if net < 0 else 0


def apply_holding_fill(hold: dict[str, Any], buy: bool, qty: int, price: float) -> None:
    """Delivery fills: a buy adds T1 quantity at a new average, a sell uses held quantity."""
    if buy:
        total = hold["quantity"] + qty
        hold["average_price"] = round((hold["average_price"] * hold["quantity"] + price * qty) / total, 2)
        hold["quantity"] = total
        hold["t1_quantity"] += qty
    else:
        hold["quantity"] = max(0, hold["quantity"] - qty)
        hold["cnc_used_quantity"] += qty
        hold["t1_quantity"] = min(hold["t1_quantity"], hold["quantity"])
