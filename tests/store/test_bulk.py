"""The driver-level writers (store/writers/sqlite.py, postgres.py) against SQLAlchemy, and ``read_state``.

``apply()`` writes PostgreSQL and SQLite through short driver-level statements that convert values
themselves; these tests pin that it stores byte-for-byte what SQLAlchemy's column types would store,
on every backend, and that batch-internal duplicates are counted and resolved as before.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import PortfolioStore, schema
from airflow_provider_upstox.store.rows import prepare
from airflow_provider_upstox.store.writers import sqlalchemy_core
from tests.store.histories import BASE_RECEIVED_US, order_message
from tests.store.test_store import GTT, HOLDING, POSITION, upd

_VOLATILE = {"account", "write_id", "updated_at"}


def _mixed_batch() -> list[Update]:
    return [
        upd("order", order_message("240221000000001", status="open", price=92.95), recv=1),
        upd(
            "order",
            order_message(
                "240221000000002",
                status="complete",
                filled_quantity=10,
                pending_quantity=0,
                average_price=0.1 + 0.2,  # 0.30000000000000004: rounded to 6 places
                price=None,
                tag="ünïcødé ✓",
                exchange_timestamp="",
            ),
            recv=2,
            source="snapshot",
        ),
        upd("position", {**POSITION, "sell_price": 1234567.1234567}, recv=3),
        upd("holding", HOLDING, recv=4),
        upd("gtt_order", GTT, recv=5),
    ]


def _raw_rows(store: PortfolioStore, table: sa.Table, account: str) -> list[tuple[Any, ...]]:
    """Rows exactly as the driver returns them (no SQLAlchemy result processing)."""
    cols = [c.name for c in table.c if c.name not in _VOLATILE]
    keys = [c.name for c in table.primary_key.columns]
    quote = store.engine.dialect.identifier_preparer.quote
    sql = (
        f"SELECT {', '.join(quote(c) for c in cols)} FROM {table.name} WHERE account = '{account}' "
        f"ORDER BY {', '.join(quote(k) for k in keys)}"
    )
    with store.engine.connect() as conn:
        return [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in conn.exec_driver_sql(sql)
        ]


def test_apply_stores_exactly_what_sqlalchemy_types_store(store: PortfolioStore) -> None:
    batch = _mixed_batch()
    result = store.apply(batch, account="FAST")
    assert (result.inserted, result.rejected, result.events) == (5, 0, 2)

    # Reference: the same prepared rows through SQLAlchemy Core (its bind processors) for another account.
    now = datetime.now(timezone.utc)
    prepared = [prepare(u, "SLOW", now, 1) for u in batch]
    with store.engine.begin() as conn:
        for update_type, table in schema.STATE_TABLES.items():
            batch_rows = [p.row for p in prepared if p.update_type == update_type]
            sqlalchemy_core.upsert_rows(conn, table, schema.KEY_COLUMNS[update_type], batch_rows)
        events = [p.event for p in prepared if p.event is not None]
        sqlalchemy_core.insert_events(conn, events)

    for table in (*schema.STATE_TABLES.values(), schema.order_events):
        fast, slow = _raw_rows(store, table, "FAST"), _raw_rows(store, table, "SLOW")
        assert fast, table.name
        assert len(fast) == len(slow), table.name
        # JSON text may differ in spacing between serializers: JSON columns are compared parsed.
        assert [_norm_json(r) for r in fast] == [_norm_json(r) for r in slow], table.name


def _norm_json(row: tuple[Any, ...]) -> tuple[Any, ...]:
    out = []
    for v in row:
        if isinstance(v, str) and v[:1] in "{[":
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        out.append(v)
    return tuple(out)


def test_duplicate_state_in_one_batch_keeps_the_later_arrival(store: PortfolioStore) -> None:
    """Same state twice in a batch: the event is recorded once, the row holds the later arrival."""
    first = upd("order", order_message("240221000000009", status="open"), recv=10, seq=10)
    again = upd("order", order_message("240221000000009", status="open"), recv=20, seq=20)
    result = store.apply([first, again], account="DUP")
    assert (result.inserted, result.updated, result.ignored, result.events) == (1, 0, 1, 1)
    row = store.read_state("DUP")["order"]["240221000000009"]
    assert row["seq"] == 20
    assert row["received_at"] == datetime.fromtimestamp((BASE_RECEIVED_US + 20) / 1e6, tz=timezone.utc)


def test_read_state_returns_every_table_keyed_like_update_key(store: PortfolioStore) -> None:
    store.apply(_mixed_batch(), account="READ")
    store.apply(_mixed_batch()[:1], account="OTHER")
    state = store.read_state("READ")
    assert set(state) == {"order", "position", "holding", "gtt_order"}
    assert set(state["order"]) == {"240221000000001", "240221000000002"}
    assert set(state["position"]) == {"NSE_EQ|INE848E01016:D"}
    assert set(state["holding"]) == {"INE848E01016"}
    assert set(state["gtt_order"]) == {"GTT-CU25270200024002"}
    order = state["order"]["240221000000001"]
    assert order["account"] == "READ"
    assert order["status"] == "open"
    assert order["price"] == Decimal("92.95")
    assert order["raw"]["order_id"] == "240221000000001"
    assert isinstance(order["version"], bytes)
    assert order["received_at"].tzinfo is not None
    assert state["order"]["240221000000002"]["average_price"] == Decimal("0.3")
    assert state["gtt_order"]["GTT-CU25270200024002"]["rules"][0]["strategy"] == "ENTRY"
    assert store.read_state("NOBODY") == {"order": {}, "position": {}, "holding": {}, "gtt_order": {}}


def test_driver_errors_surface_as_sqlalchemy_errors_and_nothing_is_written(store: PortfolioStore) -> None:
    """A database failure that is not about a value (here: a table gone) fails the whole batch with a
    ``DBAPIError``; nothing is half-written (the progress row, written last, is what fails)."""
    good = upd("order", order_message("240221000000011", status="open"), recv=1)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE upstox_stream_progress RENAME TO upstox_stream_progress_gone")
    with pytest.raises(sa.exc.DBAPIError):
        store.apply([good, upd("position", POSITION, recv=2)], account="ERR")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE upstox_stream_progress_gone RENAME TO upstox_stream_progress")
    assert store.read_state("ERR") == {"order": {}, "position": {}, "holding": {}, "gtt_order": {}}
    assert store.get_progress("ERR") is None


def _orders(ids: range, recv: int, **fields: Any) -> list[Update]:
    return [upd("order", order_message(f"2402210{i:08d}", **fields), recv=recv) for i in ids]


@pytest.mark.parametrize("n", [19, 20, 21, 47])
@pytest.mark.parametrize("duplicates", [False, True])
def test_batches_of_many_rows_count_and_store_as_one_row_at_a_time(
    store: PortfolioStore, n: int, duplicates: bool
) -> None:
    """Batches around and over the SQLite writer's rows per statement (20: multi-row statements
    and a remainder) count and store what SQLAlchemy's statements do, with new, newer, stale and
    (optionally) in-batch duplicate states mixed in one batch."""
    first = _orders(range(n), recv=10, status="open")
    second = [
        *_orders(range(0, n + 4, 2), recv=20, status="open", filled_quantity=5, pending_quantity=5),
        *_orders(range(1, n, 2), recv=5, status="open"),  # stale: received before the stored state
        *_orders(range(n + 5, n + 5 + n // 3), recv=20, status="open"),  # new orders
    ]
    if duplicates:  # a later state of some orders, and an exact replay of one, in the same batch
        second += _orders(range(0, n, 3), recv=30, status="complete", filled_quantity=10, pending_quantity=0)
        second += _orders(range(1), recv=25, status="open", filled_quantity=5, pending_quantity=5)
    fast = [store.apply(batch, account="FAST") for batch in (first, second)]
    store._writer = sqlalchemy_core.SqlAlchemyWriter()  # the reference: one statement per table
    slow = [store.apply(batch, account="SLOW") for batch in (first, second)]
    assert fast == slow
    assert fast[0].inserted == fast[0].events == n
    assert fast[1].updated >= n // 2  # both kinds really happened
    assert fast[1].ignored >= n // 2
    for table in (schema.orders, schema.order_events):
        fast_rows, slow_rows = _raw_rows(store, table, "FAST"), _raw_rows(store, table, "SLOW")
        assert len(fast_rows) == len(slow_rows) > n, table.name
        assert [_norm_json(r) for r in fast_rows] == [_norm_json(r) for r in slow_rows], table.name
