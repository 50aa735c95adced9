"""Fills: every trade of an order once, in ``upstox_trades`` (``docs/PROTOCOL.md`` §8).

A trade is immutable at the exchange, so a fill is *inserted once* (keyed by account and
``trade_id``) and never updated: whichever read brings it first, the day's trade book read at a
snapshot or an order's trades read by the history backfill, writes it; every later copy is a no-op
(``ON CONFLICT DO NOTHING`` / ``INSERT IGNORE``, built in :func:`.upsert.trade_insert`).

Validation is strict and per fill: a fill without a ``trade_id`` or ``order_id``, with a negative
or non-integer quantity, a price that is not a finite number, an unparseable timestamp or a text
longer than its column is recorded in ``upstox_rejected_updates`` (``update_type`` ``trade``) and
the other fills of the read are stored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_upstox.models.updates import INDIA_TZ, Update
from airflow_provider_upstox.store import schema, upsert, validation

log = logging.getLogger(__name__)

#: ``upstox_trades.source``: the day's trade book, or one order's trades (history backfill).
TRADE_BOOK: Final = "trade_book"
ORDER_TRADES: Final = "order_trades"
TRADE_SOURCES: Final = frozenset({TRADE_BOOK, ORDER_TRADES})

#: Timestamp spellings Upstox uses for fills: the order format, and the trade pages' example.
_TIME_FORMATS: Final = ("%Y-%m-%d %H:%M:%S", "%d-%b-%Y %H:%M:%S")
_TEXT_COLUMNS: Final = tuple(
    c.name for c in schema.trades.c if isinstance(c.type, sa.String) and c.name not in ("account", "source")
)
_MAX_MONEY: Final = Decimal("1e13")


@dataclass(frozen=True)
class TradeWrite:
    """What one :func:`write_trades` call did."""

    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0


def parse_trade_time(value: Any) -> datetime | None:
    """An Upstox fill timestamp (India time, either documented spelling) as aware UTC.

    :raises ValueError: a non-empty value in neither format.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a timestamp string")
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=INDIA_TZ).astimezone(timezone.utc)
        except ValueError:
            continue
    raise ValueError(f"{value!r} is neither YYYY-MM-DD HH:MM:SS nor DD-Mon-YYYY HH:MM:SS")


def trade_row(data: Any, account: str, source: str, received_at: datetime) -> dict[str, Any]:
    """The ``upstox_trades`` row of one fill.

    :raises ValueError: naming what is wrong with *data*.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a fill is a JSON object, got {type(data).__name__}")
    row: dict[str, Any] = {"account": account, "source": source, "received_at": received_at, "raw": data}
    for name in ("trade_id", "order_id"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}={value!r} is not a non-empty string")
    for name in _TEXT_COLUMNS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            value = str(value) if isinstance(value, int) and not isinstance(value, bool) else None
            if value is None:
                raise ValueError(f"{name}={data.get(name)!r} is not text")
        if isinstance(value, str):
            limit = schema.trades.c[name].type.length  # type: ignore[attr-defined]
            if len(value) > limit or "\x00" in value:
                raise ValueError(f"{name} is longer than {limit} characters or contains NUL")
        row[name] = value
    quantity = data.get("quantity")
    if type(quantity) is not int or not 0 <= quantity < 2**63:
        raise ValueError(f"quantity={quantity!r} is not a non-negative integer")
    row["quantity"] = quantity
    price = data.get("average_price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price):
            raise ValueError(f"average_price={price!r} is not a finite number")
        row["average_price"] = Decimal(str(price))
        if abs(row["average_price"]) >= _MAX_MONEY:
            raise ValueError(f"average_price={price!r} is out of range")
    else:
        row["average_price"] = None
    for name in ("exchange_timestamp", "order_timestamp"):
        row[name] = parse_trade_time(data.get(name))
    validation.check_text(Update(update_type="trade", data=data))  # JSON-storable (no NUL, valid UTF-8)
    return row


def write_trades(
    conn: Connection, account: str, fills: Iterable[Any], source: str, received_at: datetime
) -> TradeWrite:
    """Insert every valid fill of *fills* not stored yet; record the invalid ones as rejected.

    :raises ValueError: *source* is not one of :data:`TRADE_SOURCES` (a caller error).
    """
    if source not in TRADE_SOURCES:
        raise ValueError(f"trade source {source!r} is not one of {sorted(TRADE_SOURCES)}")
    now = datetime.now(timezone.utc)
    rows: dict[str, dict[str, Any]] = {}
    rejects: list[dict[str, Any]] = []
    for data in fills:
        try:
            row = trade_row(data, account, source, received_at)
        except Exception as exc:  # one bad fill must never cost the others
            update = Update(update_type="trade", data=data if isinstance(data, dict) else {"value": data})
            rejects.append(validation.reject_row(update, account, f"invalid fill: {exc}", now))
            log.warning("Rejected a fill of %s: %s", account, exc)
            continue
        rows.setdefault(row["trade_id"], row)
    t = schema.trades
    known: set[str] = set()
    ids = sorted(rows)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = sa.select(t.c.trade_id).where(t.c.account == account, t.c.trade_id.in_(chunk))
        known.update(conn.execute(query).scalars())
    new = [rows[k] for k in ids if k not in known]  # key order: concurrent writers lock alike
    if new:
        # DO NOTHING still guards against a concurrent writer inserting the same fill meanwhile.
        conn.execute(upsert.trade_insert(conn.dialect.name), new)
    inserted = len(new)
    if rejects:
        conn.execute(schema.rejected_updates.insert(), rejects)
    return TradeWrite(inserted, len(rows) - inserted, len(rejects))


def fills_by_order(conn: Connection, account: str) -> dict[str, int]:
    """Sum of the stored fills' quantities per order of *account*."""
    t = schema.trades
    query = (
        sa.select(t.c.order_id, sa.func.sum(t.c.quantity))
        .where(t.c.account == account)
        .group_by(t.c.order_id)
    )
    return {str(order_id): int(total or 0) for order_id, total in conn.execute(query)}
