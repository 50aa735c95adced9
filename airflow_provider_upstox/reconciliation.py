"""Reconciliation of the portfolio store against REST snapshots: what is compared, and how.

No Airflow and no database import: the comparison is a pure function of two mappings
``key -> Upstox object``, tested on its own. The operator
(:class:`~airflow_provider_upstox.operators.reconcile.UpstoxReconcileOperator`) fetches the
snapshots through the hook, reads the stored objects with
:meth:`~airflow_provider_upstox.store.PortfolioStore.read_stored_objects` and records runs and
differences through the store.

Compared fields are the ones that matter to a user and that the stream and REST spell the same way:
order ``status`` (case and surrounding blanks ignored), ``filled_quantity``, ``quantity``; position
``quantity``, ``day_buy_quantity``, ``day_sell_quantity``; holding ``quantity``; GTT rule statuses.
Numbers are compared as numbers (``"2"`` equals ``2.0``).

Scope, because the REST reads do not cover everything the store keeps:

* the order book lists *today's* orders only, so a stored order from an earlier India day is not
  "extra";
* a position or holding whose stored quantity is 0 and that the snapshot no longer lists is closed,
  not "extra".

Fills (:func:`compare_fills`): each stored order's ``filled_quantity`` must equal the sum of its
stored fills (``upstox_trades``); a difference is a ``fills_mismatch`` of update type ``trade``
(a fill missing, or an order state that lags its fills).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

from airflow_provider_upstox.models.updates import GTT_ORDER, HOLDING, INDIA_TZ, ORDER, POSITION, natural_key

log = logging.getLogger(__name__)

MISSING: Final = "missing"  # in the snapshot, not in the database
EXTRA: Final = "extra"  # in the database, not in the snapshot
MISMATCH: Final = "field_mismatch"
FILLS_MISMATCH: Final = "fills_mismatch"  # an order's filled_quantity differs from the sum of its fills
TRADE: Final = "trade"

COMPARED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    ORDER: ("status", "filled_quantity", "quantity"),
    POSITION: ("quantity", "day_buy_quantity", "day_sell_quantity"),
    HOLDING: ("quantity",),
    GTT_ORDER: ("rule_statuses",),
}


@dataclass(frozen=True)
class Discrepancy:
    """One difference between the database and the snapshot."""

    update_type: str
    key: str
    kind: str
    field: str | None = None
    db_value: Any = None
    snapshot_value: Any = None


def comparable(update_type: str, data: Mapping[str, Any], field: str) -> Any:
    """The value of *field* normalised for comparison (numbers as float, status lower-cased)."""
    if update_type == GTT_ORDER and field == "rule_statuses":
        rules = data.get("rules") or []
        return sorted(
            f"{r.get('strategy')}:{str(r.get('status') or '').upper()}" for r in rules if isinstance(r, dict)
        )
    value = data.get(field)
    if field == "status" and isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _order_day(data: Mapping[str, Any]) -> date | None:
    text = data.get("order_timestamp")
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.strptime(text[:10], "%Y-%m-%d").date()
    except ValueError:
        return None


def _is_closed(update_type: str, data: Mapping[str, Any]) -> bool:
    if update_type not in (POSITION, HOLDING):
        return False
    quantity = comparable(update_type, data, "quantity")
    return quantity in (None, 0.0)


def index_rows(update_type: str, rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """REST rows keyed by their natural key (rows without a key are logged and skipped)."""
    indexed: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = natural_key(update_type, dict(row))
        if key is None:
            log.warning("Snapshot %s row without its key; skipped", update_type)
            continue
        indexed[key] = dict(row)
    return indexed


def compare(
    update_type: str,
    db_rows: Mapping[str, Mapping[str, Any]],
    snapshot_rows: Mapping[str, Mapping[str, Any]],
    *,
    today: date | None = None,
    fields: Iterable[str] | None = None,
) -> list[Discrepancy]:
    """Differences between stored objects and snapshot objects of one update type, sorted by key.

    :param today: the India date of the snapshot: stored orders from other days are out of scope.
    """
    today = today or datetime.now(INDIA_TZ).date()
    names = tuple(fields or COMPARED_FIELDS.get(update_type, ()))
    found: list[Discrepancy] = []
    for key in sorted(set(db_rows) | set(snapshot_rows)):
        stored, snap = db_rows.get(key), snapshot_rows.get(key)
        if stored is None and snap is not None:
            if not _is_closed(update_type, snap):
                found.append(Discrepancy(update_type, key, MISSING, snapshot_value=dict(snap)))
            continue
        if snap is None and stored is not None:
            if update_type == ORDER and _order_day(stored) not in (None, today):
                continue
            if _is_closed(update_type, stored):
                continue
            found.append(Discrepancy(update_type, key, EXTRA, db_value=dict(stored)))
            continue
        assert stored is not None
        assert snap is not None
        for name in names:
            left, right = comparable(update_type, stored, name), comparable(update_type, snap, name)
            if left != right:
                found.append(Discrepancy(update_type, key, MISMATCH, name, left, right))
    return found


def compare_fills(
    orders: Mapping[str, Mapping[str, Any]],
    fills: Mapping[str, int],
    *,
    days: Iterable[date] | None = None,
) -> list[Discrepancy]:
    """Orders whose ``filled_quantity`` is not the sum of their stored fills, sorted by order id.

    :param orders: stored orders by order id (:meth:`PortfolioStore.read_stored_objects`).
    :param fills: sum of the stored fills' quantities by order id
        (:meth:`PortfolioStore.filled_by_fills`).
    :param days: the India dates the trade book covers (default today; see :func:`trade_book_days`):
        orders of other days are out of scope, their fills are in no trade book read.
    """
    in_scope = set(days) if days is not None else {datetime.now(INDIA_TZ).date()}
    found: list[Discrepancy] = []
    for order_id in sorted(set(orders) | set(fills)):
        order = orders.get(order_id)
        if order is not None and _order_day(order) not in (None, *in_scope):
            continue
        filled = comparable(ORDER, order, "filled_quantity") if order is not None else None
        total = float(fills.get(order_id, 0))
        if (filled or 0.0) != total:
            found.append(Discrepancy(TRADE, order_id, FILLS_MISMATCH, "filled_quantity", filled, total))
    return found


def trade_book_days(trade_book: Iterable[Mapping[str, Any]], today: date | None = None) -> set[date]:
    """*today* (default: now in India) and the day of every fill's order in *trade_book*."""
    days = {today or datetime.now(INDIA_TZ).date()}
    days.update(d for d in (_order_day(fill) for fill in trade_book) if d is not None)
    return days
