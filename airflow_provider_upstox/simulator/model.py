"""The simulated account: orders walking Upstox status paths, positions, holdings and GTT rules.

The model is a pure, synchronous state machine driven by :meth:`MarketModel.step`. Each step is one
market event (an order placed or moved one status further, a GTT created, triggered or expired) and
returns the messages it caused, each already JSON-encoded once, so the server fans the same bytes
out to every client and keeps them as the ground-truth history. Everything random comes from one
``random.Random(seed)`` and the clock is simulated, so the same seed and the same number of steps
give byte-identical histories whatever the wall clock or the network does.

The REST views (order book, positions...) read the same dicts the messages were encoded from, so
REST answers are consistent with what the stream has sent at every instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import msgspec

from airflow_provider_upstox.simulator import instruments as st
from airflow_provider_upstox.simulator import records as rc
from airflow_provider_upstox.simulator.instruments import INSTRUMENTS, Instrument

INDIA: Final = timezone(timedelta(hours=5, minutes=30))
#: Default start of the simulated clock: a Monday, market open, India time.
DEFAULT_START: Final = datetime(2025, 1, 6, 9, 15, 0, tzinfo=INDIA)
MAX_ACTIVE_ORDERS: Final = 12
MAX_PENDING_GTT: Final = 3

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Emitted:
    """One message the model produced: its type, the dict (do not mutate) and the encoded frame."""

    update_type: str
    data: dict[str, Any]
    frame: bytes


@dataclass
class _OrderRun:
    """An order plus the transitions still ahead of it (its planned status path)."""

    data: dict[str, Any]
    plan: list[dict[str, Any]]
    instrument: Instrument
    history: list[bytes] = field(default_factory=list)
    gtt_id: str | None = None


class MarketModel:
    """Deterministic simulated Upstox account.

    :param seed: seeds every random choice.
    :param user_id: the account's Upstox user id (profile ``user_id``, order ``user_id``).
    :param start: start of the simulated India-time clock.
    """

    def __init__(self, seed: int = 0, user_id: str = "AB1234", start: datetime = DEFAULT_START) -> None:
        self.seed = seed
        self.user_id = user_id
        self.rng = random.Random(seed)
        self.clock = start.astimezone(INDIA).replace(microsecond=0)
        self.steps = 0
        self.orders: dict[str, _OrderRun] = {}
        self._active: list[str] = []
        self.positions: dict[str, dict[str, Any]] = {}
        self.holdings: dict[str, dict[str, Any]] = {}
        self.gtt_orders: dict[str, dict[str, Any]] = {}
        self._pending_gtt: list[str] = []
        self.trades: list[dict[str, Any]] = []
        self.prices = {i.isin: i.base_price for i in INSTRUMENTS}
        self._order_counter = 0
        self._trade_counter = 0
        self._gtt_counter = 0
        self._seed_holdings()

    # ------------------------------------------------------------------ public API

    def step(self) -> list[Emitted]:
        """Advance the market by one event and return the messages it caused, in sending order."""
        self.steps += 1
        self.clock += timedelta(seconds=self.rng.choice((0, 0, 1, 1, 2)))
        out: list[Emitted] = []
        roll = self.rng.random()
        if not self._active or (roll < 0.22 and len(self._active) < MAX_ACTIVE_ORDERS):
            self._place_order(out)
        elif roll < 0.27:
            self._gtt_event(out)
        else:
            self._advance_order(self.rng.choice(self._active), out)
        return out

    def order_book(self) -> list[dict[str, Any]]:
        return [rc.rest_row(run.data) for run in self.orders.values()]

    def order_details(self, order_id: str) -> dict[str, Any] | None:
        run = self.orders.get(order_id)
        return None if run is None else rc.rest_row(run.data)

    def order_history(self, order_id: str) -> list[dict[str, Any]] | None:
        run = self.orders.get(order_id)
        if run is None:
            return None
        return [rc.rest_row(msgspec.json.decode(frame)) for frame in run.history]

    def position_rows(self) -> list[dict[str, Any]]:
        return [rc.rest_row(p) for p in self.positions.values()]

    def holding_rows(self) -> list[dict[str, Any]]:
        return [rc.rest_row(h) for h in self.holdings.values()]

    def gtt_rows(self, gtt_order_id: str | None = None) -> list[dict[str, Any]]:
        rows = self.gtt_orders.items()
        return [rc.rest_row(g) for gid, g in rows if gtt_order_id is None or gid == gtt_order_id]

    def ground_truth(self) -> dict[str, Any]:
        """Every order's final state and full history, positions, holdings, GTT (``/_sim/state``)."""
        return {
            "user_id": self.user_id,
            "clock": self.clock.strftime("%Y-%m-%d %H:%M:%S"),
            "steps": self.steps,
            "orders": {
                oid: {"final": run.data, "history": [msgspec.json.decode(f) for f in run.history]}
                for oid, run in self.orders.items()
            },
            "positions": self.positions,
            "holdings": self.holdings,
            "gtt_orders": self.gtt_orders,
            "trades": self.trades,
        }

    # ------------------------------------------------------------------ helpers

    def _now(self) -> str:
        return self.clock.strftime("%Y-%m-%d %H:%M:%S")

    def _now_us(self) -> int:
        return int(self.clock.timestamp()) * 1_000_000

    def _price(self, inst: Instrument) -> float:
        """Random-walk the instrument's price by a few ticks and return it (tick 0.05)."""
        old = self.prices[inst.isin]
        new = max(0.05, old * (1 + self.rng.uniform(-0.004, 0.004)))
        new = round(round(new / 0.05) * 0.05, 2)
        self.prices[inst.isin] = new
        return new

    def _emit(self, out: list[Emitted], update_type: str, data: dict[str, Any]) -> bytes:
        frame = _encode(data)
        out.append(Emitted(update_type, data, frame))
        return frame

    def _seed_holdings(self) -> None:
        for inst in self.rng.sample(INSTRUMENTS, 3):
            qty = self.rng.randint(1, 40)
            self.holdings[inst.isin] = rc.holding(
                inst, qty, round(inst.base_price * self.rng.uniform(0.8, 1.1), 2)
            )

    # ------------------------------------------------------------------ orders

    def _place_order(self, out: list[Emitted], gtt: dict[str, Any] | None = None) -> str:
        rng = self.rng
        if gtt is not None:
            inst = next(i for i in INSTRUMENTS if i.instrument_token == gtt["instrument_token"])
            product, side, qty, order_type = gtt["product"], gtt["_side"], gtt["quantity"], "MARKET"
            outcome, is_amo = "complete", False
        else:
            product = rng.choices(("D", "I", "MTF"), (5, 4, 1))[0]
            held = [
                i
                for i in INSTRUMENTS
                if self.holdings.get(i.isin, {}).get("quantity", 0) > 0 and product == "D"
            ]
            side = "SELL" if held and rng.random() < 0.35 else "BUY"
            inst = rng.choice(held) if side == "SELL" else rng.choice(INSTRUMENTS)
            max_qty = self.holdings[inst.isin]["quantity"] if side == "SELL" and product == "D" else 50
            qty = rng.randint(1, max(1, min(max_qty, 50)))
            order_type = rng.choices(("MARKET", "LIMIT", "SL", "SL-M"), (4, 4, 1, 1))[0]
            is_amo = rng.random() < 0.06
            outcome = "amo" if is_amo else rng.choices(rc.OUTCOMES, rc.OUTCOME_WEIGHTS)[0]
        self._order_counter += 1
        order_id = f"{self.clock:%y%m%d}{self.seed % 1000:03d}{self._order_counter:06d}"
        price = self.prices[inst.isin]
        limit = round(round(price * rng.uniform(0.99, 1.01) / 0.05) * 0.05, 2)
        data: dict[str, Any] = {
            "update_type": "order",
            "user_id": self.user_id,
            "userId": self.user_id,
            "exchange": inst.exchange,
            "instrument_token": inst.instrument_token,
            "instrument_key": inst.instrument_token,
            "trading_symbol": inst.trading_symbol,
            "tradingsymbol": inst.trading_symbol,
            "product": product,
            "order_type": order_type,
            "average_price": 0,
            "price": limit if order_type in ("LIMIT", "SL") else 0,
            "trigger_price": limit if order_type in ("SL", "SL-M") else 0,
            "quantity": qty,
            "disclosed_quantity": 0,
            "pending_quantity": qty,
            "transaction_type": side,
            "order_ref_id": str(rng.randrange(10**13, 10**14)),
            "exchange_order_id": "",
            "parent_order_id": None,
            "validity": "DAY",
            "status": st.AMO_RECEIVED if is_amo else st.PUT_RECEIVED,
            "is_amo": is_amo,
            "variety": "AMO" if is_amo else "SIMPLE",
            "tag": rng.choice((None, None, "swing", "algo-7", "गति")),
            "exchange_timestamp": None,
            "status_message": "",
            "order_id": order_id,
            "order_request_id": "1",
            "order_timestamp": self._now(),
            "filled_quantity": 0,
            "guid": None,
            "placed_by": self.user_id,
            "status_message_raw": None,
        }
        run = _OrderRun(
            data, rc.plan(outcome, order_type, rng), inst, gtt_id=None if gtt is None else gtt["gtt_order_id"]
        )
        self.orders[order_id] = run
        self._active.append(order_id)
        run.history.append(self._emit(out, "order", dict(data)))
        return order_id

    def _advance_order(self, order_id: str, out: list[Emitted]) -> None:
        run = self.orders[order_id]
        data = run.data
        move = run.plan.pop(0)
        data["status"] = move["status"]
        data["order_timestamp"] = self._now()
        data["status_message"] = move.get("message", "")
        data["status_message_raw"] = move.get("message") or None
        if move.get("exchange") and not data["exchange_order_id"]:
            data["exchange_order_id"] = f"1{self.rng.randrange(10**14, 10**15)}"
        if data["exchange_order_id"]:
            data["exchange_timestamp"] = self._now()
        if move.get("modify"):
            data["order_request_id"] = str(int(data["order_request_id"]) + 1)
            if data["order_type"] in ("LIMIT", "SL"):
                data["price"] = round(round(self.prices[run.instrument.isin] / 0.05) * 0.05, 2)
        fill_qty = 0
        if "fill" in move:
            remaining = data["quantity"] - data["filled_quantity"]
            fill_qty = (
                remaining if move["fill"] == "rest" else max(1, int(remaining * self.rng.uniform(0.2, 0.6)))
            )
            fill_qty = min(fill_qty, remaining)
        fill_price = 0.0
        if fill_qty:
            fill_price = self._price(run.instrument)
            filled = data["filled_quantity"]
            data["average_price"] = round(
                (data["average_price"] * filled + fill_price * fill_qty) / (filled + fill_qty), 2
            )
            data["filled_quantity"] = filled + fill_qty
        data["pending_quantity"] = (
            0 if data["status"] in st.TERMINAL else data["quantity"] - data["filled_quantity"]
        )
        if data["status"] in st.TERMINAL or not run.plan:
            self._active.remove(order_id)
        run.history.append(self._emit(out, "order", dict(data)))
        if fill_qty:
            self._record_fill(run, fill_qty, fill_price, out)

    def _record_fill(self, run: _OrderRun, qty: int, price: float, out: list[Emitted]) -> None:
        data, inst = run.data, run.instrument
        self._trade_counter += 1
        self.trades.append(
            {
                "exchange": data["exchange"],
                "product": data["product"],
                "trading_symbol": data["trading_symbol"],
                "tradingsymbol": data["trading_symbol"],
                "instrument_token": data["instrument_token"],
                "order_type": data["order_type"],
                "transaction_type": data["transaction_type"],
                "quantity": qty,
                "exchange_order_id": data["exchange_order_id"],
                "order_id": data["order_id"],
                "exchange_timestamp": self._now(),
                "average_price": price,
                "trade_id": f"{self._trade_counter:08d}",
                "order_ref_id": data["order_ref_id"],
                "order_timestamp": data["order_timestamp"],
            }
        )
        buy = data["transaction_type"] == "BUY"
        pos = self.positions.setdefault(
            f"{inst.instrument_token}:{data['product']}", rc.position(inst, data["product"])
        )
        rc.apply_position_fill(pos, buy, qty, price)
        self._emit(out, "position", dict(pos))
        if data["product"] == "D":
            hold = self.holdings.setdefault(inst.isin, rc.holding(inst, 0, 0.0))
            rc.apply_holding_fill(hold, buy, qty, price)
            self._emit(out, "holding", dict(hold))

    # ------------------------------------------------------------------ GTT

    def _gtt_event(self, out: list[Emitted]) -> None:
        if len(self._pending_gtt) < MAX_PENDING_GTT and (not self._pending_gtt or self.rng.random() < 0.5):
            self._create_gtt(out)
            return
        gtt_id = self.rng.choice(self._pending_gtt)
        gtt = self.gtt_orders[gtt_id]
        rules = gtt["rules"]
        entry = rules[0]
        action = self.rng.choices(("trigger", "expire", "fail", "cancel"), (6, 2, 1, 1))[0]
        if action == "trigger" and entry["status"] == "PENDING":
            order_id = self._place_order([], gtt={**gtt, "_side": entry["transaction_type"]})
            self._set_rule(entry, "COMPLETED", "", order_id)
            if gtt["type"] == "SINGLE":
                self._finish_gtt(gtt_id)
            self._emit(out, "gtt_order", rc.copy_gtt(gtt))
            self._emit_last_order(order_id, out)
        elif action == "trigger":
            exits = [r for r in rules[1:] if r["status"] == "PENDING"]
            hit = self.rng.choice(exits)
            order_id = self._place_order([], gtt={**gtt, "_side": hit["transaction_type"]})
            self._set_rule(hit, "COMPLETED", "", order_id)
            for other in exits:
                if other is not hit:
                    self._set_rule(other, "CANCELLED", "", None)
            self._finish_gtt(gtt_id)
            self._emit(out, "gtt_order", rc.copy_gtt(gtt))
            self._emit_last_order(order_id, out)
        else:
            message = {"expire": "GTT expired", "fail": "Order price is outside circuit limits", "cancel": ""}
            for i, rule in enumerate(rules):
                if rule["status"] == "PENDING":
                    failed = action == "fail" and i == 0
                    self._set_rule(
                        rule,
                        "FAILED" if failed else "CANCELLED",
                        message[action] if failed or action == "expire" else "",
                        None,
                    )
            if action == "expire":
                gtt["expires_at"] = self._now_us()
            self._finish_gtt(gtt_id)
            self._emit(out, "gtt_order", rc.copy_gtt(gtt))

    def _emit_last_order(self, order_id: str, out: list[Emitted]) -> None:
        run = self.orders[order_id]
        out.append(Emitted("order", msgspec.json.decode(run.history[-1]), run.history[-1]))

    def _set_rule(self, rule: dict[str, Any], status: str, message: str, order_id: str | None) -> None:
        rule["status"], rule["message"], rule["order_id"] = status, message, order_id

    def _finish_gtt(self, gtt_id: str) -> None:
        self._pending_gtt.remove(gtt_id)

    def _create_gtt(self, out: list[Emitted]) -> None:
        rng = self.rng
        inst = rng.choice(INSTRUMENTS)
        price = self.prices[inst.isin]
        self._gtt_counter += 1
        gtt_id = f"GTT-C{self.clock:%y%m%d}{self.seed % 1000:03d}{self._gtt_counter:05d}"
        multiple = rng.random() < 0.5
        rules = [
            rc.rule("ENTRY", rng.choice(("ABOVE", "BELOW", "IMMEDIATE")), round(price * 0.99, 2), "BUY", None)
        ]
        if multiple:
            rules.append(rc.rule("TARGET", "IMMEDIATE", round(price * 1.05, 2), "SELL", None))
            rules.append(
                rc.rule("STOPLOSS", "IMMEDIATE", round(price * 0.95, 2), "SELL", rng.choice((None, 1)))
            )
        gtt: dict[str, Any] = {
            "update_type": "gtt_order",
            "type": "MULTIPLE" if multiple else "SINGLE",
            "exchange": inst.segment,
            "instrument_token": inst.instrument_token,
            "quantity": rng.randint(1, 20),
            "product": rng.choice(("D", "I")),
            "gtt_order_id": gtt_id,
            "expires_at": self._now_us() + 365 * 86_400 * 1_000_000,
            "created_at": self._now_us(),
            "rules": rules,
        }
        self.gtt_orders[gtt_id] = gtt
        self._pending_gtt.append(gtt_id)
        self._emit(out, "gtt_order", rc.copy_gtt(gtt))
