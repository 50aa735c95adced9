"""Reconciliation of the portfolio store against REST snapshots: comparison, bookkeeping tables.

No Airflow import: the comparison is a pure function of two mappings ``key -> Upstox object``,
tested on its own; the operator (:mod:`.reconcile`) fetches the snapshots and the rows.

Compared fields are the ones that matter to a user and that the stream and REST spell the same way:
order ``status`` (case and surrounding blanks ignored), ``filled_quantity``, ``quantity``; position
``quantity``, ``day_buy_quantity``, ``day_sell_quantity``; holding ``quantity``; GTT rule statuses.
Numbers are compared as numbers (``"2"`` equals ``2.0``).

Scope, because the REST reads do not cover everything the store keeps:

* the order book lists *today's* orders only, so a stored order from an earlier India day is not
  "extra";
* a position or holding whose stored quantity is 0 and that the snapshot no longer lists is closed,
  not "extra".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa

from airflow_provider_upstox.models.updates import GTT_ORDER, HOLDING, INDIA_TZ, ORDER, POSITION, natural_key

log = logging.getLogger(__name__)

MISSING: Final = "missing"  # in the snapshot, not in the database
EXTRA: Final = "extra"  # in the database, not in the snapshot
MISMATCH: Final = "field_mismatch"

COMPARED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    ORDER: ("status", "filled_quantity", "quantity"),
    POSITION: ("quantity", "day_buy_quantity", "day_sell_quantity"),
    HOLDING: ("quantity",),
    GTT_ORDER: ("rule_statuses",),
}

metadata = sa.MetaData()

reconciliation_runs = sa.Table(
    "upstox_reconciliation_runs",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(64), nullable=False, comment="Upstox user id"),
    sa.Column("upstox_conn_id", sa.String(250), nullable=True),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("dag_run_id", sa.String(250), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("update_types", sa.String(100), nullable=False),
    sa.Column("compared", sa.Integer, nullable=False, default=0, comment="keys compared"),
    sa.Column("discrepancies", sa.Integer, nullable=False, default=0),
    sa.Column("repaired", sa.Integer, nullable=False, default=0),
    sa.Column(
        "status", sa.String(20), nullable=False, comment="running, clean, discrepancies, repaired, error"
    ),
    comment="One row per reconciliation run of the Upstox portfolio store against REST snapshots.",
)

reconciliation_discrepancies = sa.Table(
    "upstox_reconciliation_discrepancies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("upstox_reconciliation_runs.run_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("account", sa.String(64), nullable=False),
    sa.Column("update_type", sa.String(32), nullable=False),
    sa.Column("natural_key", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False, comment="missing, extra, field_mismatch"),
    sa.Column("field", sa.String(64), nullable=True),
    sa.Column("db_value", sa.Text, nullable=True, comment="JSON"),
    sa.Column("snapshot_value", sa.Text, nullable=True, comment="JSON"),
    sa.Column("repaired", sa.Boolean, nullable=False, default=False),
    comment="Each difference a reconciliation run found between the store and the REST snapshot.",
)


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


def create_tables(engine: sa.Engine) -> None:
    """Create the reconciliation tables if absent (idempotent; never drops anything)."""
    metadata.create_all(engine, checkfirst=True)


def start_run(engine: sa.Engine, **values: Any) -> int:
    """Insert a ``running`` run row and return its id."""
    with engine.begin() as conn:
        result = conn.execute(
            reconciliation_runs.insert().values(
                started_at=datetime.now(timezone.utc),
                status="running",
                compared=0,
                discrepancies=0,
                repaired=0,
                **values,
            )
        )
        key = result.inserted_primary_key
        if key is None:
            raise RuntimeError("the database returned no id for the reconciliation run")
        return int(key[0])


def finish_run(
    engine: sa.Engine,
    run_id: int,
    account: str,
    discrepancies: list[Discrepancy],
    repaired_keys: set[tuple[str, str]],
    *,
    compared: int,
    status: str,
) -> None:
    """Record every discrepancy and close the run row, in one transaction."""
    rows = [
        {
            "run_id": run_id,
            "account": account,
            "update_type": d.update_type,
            "natural_key": d.key,
            "kind": d.kind,
            "field": d.field,
            "db_value": None if d.db_value is None else json.dumps(d.db_value, default=str),
            "snapshot_value": None if d.snapshot_value is None else json.dumps(d.snapshot_value, default=str),
            "repaired": (d.update_type, d.key) in repaired_keys,
        }
        for d in discrepancies
    ]
    with engine.begin() as conn:
        if rows:
            conn.execute(reconciliation_discrepancies.insert(), rows)
        conn.execute(
            reconciliation_runs.update()
            .where(reconciliation_runs.c.run_id == run_id)
            .values(
                finished_at=datetime.now(timezone.utc),
                compared=compared,
                discrepancies=len(discrepancies),
                repaired=len({(d.update_type, d.key) for d in discrepancies} & repaired_keys),
                status=status,
            )
        )
