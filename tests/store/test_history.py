"""History steps and fills through the store, on every backend.

The scenario the backfill exists for: the store holds an order's *latest* state (from the snapshot
after a reconnect) and its older steps arrive afterwards, from ``GET /v2/order/history``, in any
order. Every step must get its ``upstox_order_events`` row exactly once, marked ``history``, and
none may replace the order's current row.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import HISTORY, SNAPSHOT, STREAM, Update
from airflow_provider_upstox.store import PortfolioStore, migrations, schema
from tests.store.histories import BASE_RECEIVED_US, order_message

ORDER_ID = "240221000000001"
T0 = "2024-02-21 09:15:00"


def realistic_history(order_id: str = ORDER_ID) -> list[dict[str, Any]]:
    """Six steps of a limit buy filled in two parts, several sharing a second (oldest first)."""

    def step(status: str, filled: int, exch: str | None, avg: float = 0.0) -> dict[str, Any]:
        return order_message(
            order_id,
            status=status,
            quantity=10,
            filled_quantity=filled,
            pending_quantity=10 - filled,
            order_timestamp=T0,
            exchange_timestamp=exch,
            exchange_order_id="1300000012345678" if exch else "",
            average_price=avg,
        )

    return [
        step("put order req received", 0, None),
        step("validation pending", 0, None),
        step("open pending", 0, None),
        step("open", 0, "2024-02-21 09:15:01"),
        step("open", 4, "2024-02-21 09:15:03", 92.9),
        step("complete", 10, "2024-02-21 09:15:05", 92.95),
    ]


def update(data: dict[str, Any], source: str, received_us: int, seq: int) -> Update:
    return Update(update_type="order", data=data, source=source, seq=seq, received_at_us=received_us)


def events(store: PortfolioStore, account: str) -> list[tuple[str, int, str]]:
    ev = schema.order_events
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                ev.c.status, ev.c.filled_quantity, ev.c.source, ev.c.event_ts, ev.c.order_timestamp
            ).where(ev.c.account == account)
        ).all()
    return sorted((r[0], r[1], r[2]) for r in rows)


def current(store: PortfolioStore, account: str) -> dict[str, Any]:
    o = schema.orders
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(o).where(o.c.account == account)).mappings().one()
    return dict(row)


@pytest.mark.parametrize("final_source", [SNAPSHOT, STREAM])
def test_every_permutation_of_older_steps_adds_events_and_keeps_the_current_row(
    store: PortfolioStore, final_source: str
) -> None:
    steps = realistic_history()
    final, older = steps[-1], steps[:-1]
    expected = sorted(
        [(s["status"], s["filled_quantity"], HISTORY) for s in older] + [("complete", 10, final_source)]
    )
    for n, order in enumerate(itertools.permutations(range(len(older)))):
        account = f"P{final_source[:2]}{n:04d}"
        store.apply([update(final, final_source, BASE_RECEIVED_US, 1)], account=account)
        fetched_us = BASE_RECEIVED_US + 60_000_000  # the history is read a minute later
        # Half the permutations arrive one step per batch, the others in one batch.
        if n % 2:
            for seq, i in enumerate(order, start=10):
                store.apply([update(older[i], HISTORY, fetched_us, seq)], account=account)
        else:
            store.apply(
                [update(older[i], HISTORY, fetched_us, 10 + k) for k, i in enumerate(order)], account=account
            )
        assert events(store, account) == expected, order
        row = current(store, account)
        assert (row["status"], row["filled_quantity"], row["source"], row["revision"]) == (
            "complete",
            10,
            final_source,
            1,
        ), order


def test_a_replayed_history_is_a_no_op(store: PortfolioStore) -> None:
    steps = realistic_history()
    account = "REPLAY1"
    store.apply(
        [update(s, STREAM, BASE_RECEIVED_US + i, i + 1) for i, s in enumerate(steps)], account=account
    )
    before = current(store, account)
    received = datetime.fromtimestamp(BASE_RECEIVED_US / 1e6 + 90, tz=timezone.utc)
    history = [update(s, HISTORY, BASE_RECEIVED_US + 90_000_000, 100 + i) for i, s in enumerate(steps)]
    assert store.record_order_history(account, ORDER_ID, history, [], received) == (0, 0)
    assert current(store, account) == before  # not even the revision moved
    assert {e[2] for e in events(store, account)} == {STREAM}


def test_missing_middle_steps_are_recorded_once_through_record_order_history(store: PortfolioStore) -> None:
    steps = realistic_history()
    account = "GAP1"
    # The stream saw the first two steps, then the connection dropped; the snapshot saw the end.
    store.apply(
        [update(s, STREAM, BASE_RECEIVED_US + i, i + 1) for i, s in enumerate(steps[:2])], account=account
    )
    snapshot = [update(steps[-1], SNAPSHOT, BASE_RECEIVED_US + 30_000_000, 50)]
    assert store.queue_history_backfill(account, snapshot) == {ORDER_ID: "changed"}
    assert store.queue_history_backfill(account, snapshot) == {ORDER_ID: "changed"}  # re-queue: one entry
    store.apply(snapshot, account=account)
    assert store.pending_history_backfill(account) == [ORDER_ID]
    fills = [trade("T1", 4, 92.9), trade("T2", 6, 92.983333)]
    received = datetime.fromtimestamp(BASE_RECEIVED_US / 1e6 + 40, tz=timezone.utc)
    history = [update(s, HISTORY, BASE_RECEIVED_US + 40_000_000, 60 + i) for i, s in enumerate(steps)]
    assert store.record_order_history(account, ORDER_ID, history, fills, received) == (3, 2)
    assert store.pending_history_backfill(account) == []
    assert store.history_backfill_counts(account) == {"pending": 0, "done": 1, "failing": 0}
    assert [e[2] for e in sorted(events(store, account))].count(HISTORY) == 3
    assert store.filled_by_fills(account) == {ORDER_ID: 10}
    # Again: nothing new anywhere.
    assert store.record_order_history(account, ORDER_ID, history, fills, received) == (0, 0)
    assert current(store, account)["source"] == SNAPSHOT


def test_queue_reasons_and_known_states(store: PortfolioStore) -> None:
    steps = realistic_history()
    account = "QUEUE1"
    store.apply([update(steps[3], STREAM, BASE_RECEIVED_US, 1)], account=account)
    snapshot = [
        update(steps[3], SNAPSHOT, BASE_RECEIVED_US + 5, 2),  # already recorded: nothing to do
        update(realistic_history("240221000000002")[0], SNAPSHOT, BASE_RECEIVED_US + 5, 3),  # never seen
        update(realistic_history("240221000000003")[2], STREAM, BASE_RECEIVED_US + 5, 4),  # live: not a gap
        update({"order_id": "bad", "status": 5}, SNAPSHOT, BASE_RECEIVED_US + 5, 5),  # invalid: skipped
    ]
    assert store.queue_history_backfill(account, snapshot) == {"240221000000002": "unseen"}
    store.history_backfill_failed(account, "240221000000002", "UpstoxServerError: 503 " + "x" * 400)
    assert store.history_backfill_counts(account) == {"pending": 1, "done": 0, "failing": 1}
    assert store.pending_history_backfill(account, max_attempts=1) == []
    assert store.pending_history_backfill(account, max_attempts=2) == ["240221000000002"]


def trade(
    trade_id: str, quantity: int, price: float, order_id: str = ORDER_ID, **fields: Any
) -> dict[str, Any]:
    data = {
        "exchange": "NSE",
        "product": "D",
        "trading_symbol": "NHPC-EQ",
        "tradingsymbol": "NHPC-EQ",
        "instrument_token": "NSE_EQ|INE848E01016",
        "order_type": "LIMIT",
        "transaction_type": "BUY",
        "quantity": quantity,
        "exchange_order_id": "1300000012345678",
        "order_id": order_id,
        "exchange_timestamp": "03-Aug-2017 15:03:42",
        "average_price": price,
        "trade_id": trade_id,
        "order_ref_id": "udapi-aqwsed14356",
        "order_timestamp": "2024-02-21 09:15:00",
    }
    data.update(fields)
    return data


def test_each_fill_is_stored_once_and_bad_fills_are_rejected(store: PortfolioStore) -> None:
    account = "FILLS1"
    now = datetime.now(timezone.utc)
    book = [trade("T1", 4, 92.9), trade("T2", 6, 93.0), trade("T1", 4, 92.9)]
    written = store.record_trade_book(account, book, now)
    assert (written.inserted, written.duplicates, written.rejected) == (2, 0, 0)
    bad = [
        trade("", 1, 1.0),
        trade("T3", -1, 1.0),
        trade("T4", 1, float("nan")),
        trade("T5", 1, 1.0, exchange_timestamp="yesterday"),
        trade("T6", True, 1.0),  # type: ignore[arg-type]
        "not an object",
        trade("T7", 2, 93.1, order_id="240221000000009"),
    ]
    written = store.record_trade_book(account, [*book, *bad], now)
    assert (written.inserted, written.duplicates, written.rejected) == (1, 2, 6)
    assert store.filled_by_fills(account) == {ORDER_ID: 10, "240221000000009": 2}
    t = schema.trades
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.account == account, t.c.trade_id == "T1")).mappings().one()
        reasons = conn.execute(
            sa.select(schema.rejected_updates.c.error).where(schema.rejected_updates.c.update_type == "trade")
        ).scalars()
        assert len(list(reasons)) == 6
    assert row["source"] == "trade_book"
    assert row["raw"]["trade_id"] == "T1"
    assert row["exchange_timestamp"] == datetime(2017, 8, 3, 9, 33, 42, tzinfo=timezone.utc)
    assert str(row["average_price"]).startswith("92.9")


def test_version_5_upgrade_keeps_every_row(db_url: str) -> None:
    """A version-4 database (no trades, no queue) upgrades in place; its events keep their source."""
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            schema.metadata.create_all(conn)
            for table in schema.HISTORY_TABLES:
                table.drop(conn)
            migrations._set_version(conn, 4)
        old = PortfolioStore(engine)
        old._migrated = True  # write as a version-4 store would: orders and events only
        old.apply([update(realistic_history()[0], STREAM, BASE_RECEIVED_US, 1)], account="OLD1")
        assert not sa.inspect(engine).has_table(schema.trades.name)
        assert PortfolioStore(engine).migrate() == schema.SCHEMA_VERSION == 6
        assert PortfolioStore(engine).migrate() == 6  # re-runnable
        inspector = sa.inspect(engine)
        assert inspector.has_table(schema.trades.name)
        assert inspector.has_table(schema.backfill_queue.name)
        assert events(PortfolioStore(engine), "OLD1") == [("put order req received", 0, STREAM)]
    finally:
        engine.dispose()
