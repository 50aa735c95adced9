"""PortfolioStore behaviour, the same suite on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import SCHEMA_VERSION, ApplyResult, PortfolioStore, schema
from airflow_provider_upstox.store.migrations import current_version
from tests.store.helpers import event_keys, rejected, state_rows
from tests.store.histories import BASE_RECEIVED_US, order_message

ACC = "AB1234"


def upd(
    kind: str, data: dict[str, Any], *, recv: int, seq: int | None = None, source: str = "stream"
) -> Update:
    return Update(
        update_type=kind,
        data=data,
        source=source,
        seq=seq if seq is not None else recv,
        received_at_us=BASE_RECEIVED_US + recv,
    )


def order(recv: int, **fields: Any) -> Update:
    return upd("order", order_message("240221025997024", **fields), recv=recv)


POSITION = {
    "instrument_token": "NSE_EQ|INE848E01016",
    "instrument_key": "NSE_EQ|INE848E01016",
    "product": "D",
    "exchange": "NSE_EQ",
    "quantity": 2,
    "buy_price": 92.925,
    "multiplier": 1,
    "buy_value": 185.85,
    "day_buy_quantity": 2,
}
HOLDING = {
    "isin": "INE848E01016",
    "instrument_token": "NSE_EQ|INE848E01016",
    "company_name": "NHPC LTD",
    "quantity": 3,
    "average_price": 89.22,
    "haircut": 0.21,
    "product": "D",
    "exchange": "NSE",
}
GTT = {
    "type": "MULTIPLE",
    "exchange": "NSE_EQ",
    "instrument_token": "NSE_EQ|INE806A01020",
    "quantity": 1,
    "product": "D",
    "gtt_order_id": "GTT-CU25270200024002",
    "expires_at": 1772216999000000,
    "created_at": 1740641185000000,
    "rules": [
        {
            "strategy": "ENTRY",
            "status": "PENDING",
            "trigger_type": "ABOVE",
            "trigger_price": 7.7,
            "transaction_type": "BUY",
            "message": "",
            "order_id": None,
            "trailing_gap": None,
        }
    ],
}
STATE_SAMPLES = {
    "position": (POSITION, "quantity"),
    "holding": (HOLDING, "quantity"),
    "gtt_order": (GTT, "quantity"),
}


def test_migrate_is_idempotent_and_versioned(store: PortfolioStore) -> None:
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    with store.engine.connect() as conn:
        assert current_version(conn) == SCHEMA_VERSION
        tables = set(sa.inspect(conn).get_table_names())
    assert {t.name for t in schema.metadata.sorted_tables} <= tables


def test_apply_migrates_on_first_use(db_url: str) -> None:
    store = PortfolioStore.from_url(db_url)
    try:
        assert store.apply([order(1)]) == ApplyResult(inserted=1, events=1)
    finally:
        store.engine.dispose()


def test_columns_are_typed_money_exact_and_times_utc(store: PortfolioStore) -> None:
    live = order(
        1, status="open", exchange_timestamp="2024-02-21 14:40:03", average_price=92.925, price=92.95
    )
    store.apply(
        [
            live,
            upd("position", POSITION, recv=2),
            upd("holding", HOLDING, recv=3),
            upd("gtt_order", GTT, recv=4),
        ],
        account=ACC,
    )
    row = state_rows(store, schema.orders, ACC)[("240221025997024",)]
    assert row["average_price"] == Decimal("92.925")
    assert row["price"] == Decimal("92.95")
    assert row["order_timestamp"] == datetime(2024, 2, 21, 9, 10, 2, tzinfo=timezone.utc)
    assert row["exchange_timestamp"] == datetime(2024, 2, 21, 9, 10, 3, tzinfo=timezone.utc)
    assert row["event_ts"] == row["exchange_timestamp"]
    assert row["raw"]["status"] == "open"
    assert row["raw"]["tag"] == "stratégie-1"
    assert row["is_amo"] is False
    assert row["is_terminal"] is False
    assert row["source"] == "stream"
    pos = state_rows(store, schema.positions, ACC)[("NSE_EQ|INE848E01016", "D")]
    assert pos["buy_price"] == Decimal("92.925")
    assert pos["buy_value"] == Decimal("185.85")
    assert state_rows(store, schema.holdings, ACC)[("INE848E01016",)]["haircut"] == Decimal("0.21")
    gtt = state_rows(store, schema.gtt_orders, ACC)[("GTT-CU25270200024002",)]
    assert gtt["created_at"] == datetime(2025, 2, 27, 7, 26, 25, tzinfo=timezone.utc)
    assert gtt["rules"][0]["strategy"] == "ENTRY"


def test_counts_inserted_updated_ignored(store: PortfolioStore) -> None:
    first = order(1, status="put order req received")
    second = order(2, status="validation pending")
    assert store.apply([first]) == ApplyResult(inserted=1, events=1)
    assert store.apply([second, first]) == ApplyResult(updated=1, ignored=1, events=1)
    assert store.apply([second, first, second]) == ApplyResult(ignored=3)
    assert state_rows(store, schema.orders, ACC)[("240221025997024",)]["status"] == "validation pending"


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        pytest.param(
            dict(status="open", exchange_timestamp="2024-02-21 14:40:03"),
            dict(status="open", exchange_timestamp="2024-02-21 14:40:04"),
            id="later-timestamp",
        ),
        pytest.param(
            dict(status="open", filled_quantity=2), dict(status="open", filled_quantity=5), id="more-filled"
        ),
        pytest.param(
            dict(status="open", order_request_id="2"),
            dict(status="modify pending", order_request_id="10"),
            id="request-id-numeric",
        ),
        pytest.param(dict(status="validation pending"), dict(status="open pending"), id="lifecycle-rank"),
        pytest.param(
            dict(status="open", exchange_timestamp="2024-02-21 15:00:00"),
            dict(status="complete", exchange_timestamp="2024-02-21 14:40:05"),
            id="terminal-wins",
        ),
    ],
)
def test_order_rule_newer_state_wins_either_order(
    store: PortfolioStore, older: dict[str, Any], newer: dict[str, Any]
) -> None:
    # The newer state arrives *first* in one account and *last* in the other: same result.
    new_first = [order(1, **newer), order(2, **older)]
    new_last = [order(1, **older), order(2, **newer)]
    for account, batches in (("A", new_first), ("B", new_last)):
        for u in batches:
            store.apply([u], account=account)
    for account in ("A", "B"):
        row = state_rows(store, schema.orders, account)[("240221025997024",)]
        assert row["raw"] == order_message("240221025997024", **newer)


def test_terminal_order_never_reverts(store: PortfolioStore) -> None:
    store.apply([order(1, status="cancelled", order_request_id="2")])
    late = order(5, status="open", order_request_id="3", exchange_timestamp="2024-02-21 15:00:00")
    assert store.apply([late]) == ApplyResult(ignored=1, events=1)
    assert state_rows(store, schema.orders, ACC)[("240221025997024",)]["status"] == "cancelled"


def test_order_snapshot_vs_live(store: PortfolioStore) -> None:
    state = dict(status="open", exchange_timestamp="2024-02-21 14:40:03")
    snap = upd("order", order_message("240221025997024", **state), recv=100, seq=999, source="snapshot")
    live_after = order(150, **state)  # received after the snapshot began: wins the tie
    store.apply([live_after])
    assert store.apply([snap]) == ApplyResult(ignored=1)
    assert state_rows(store, schema.orders, ACC)[("240221025997024",)]["source"] == "stream"
    # A snapshot read later shows newer data: it beats an older live state that arrives after it.
    newer_snap = upd(
        "order",
        order_message(
            "240221025997024", status="complete", filled_quantity=10, exchange_timestamp="2024-02-21 14:40:09"
        ),
        recv=200,
        seq=1000,
        source="snapshot",
    )
    store.apply([newer_snap])
    assert store.apply([order(300, status="open", exchange_timestamp="2024-02-21 14:40:08")]).ignored == 1
    assert state_rows(store, schema.orders, ACC)[("240221025997024",)]["status"] == "complete"


def test_events_record_each_distinct_state_once(store: PortfolioStore) -> None:
    a, b = order(1, status="put order req received"), order(2, status="validation pending")
    store.apply([a, b, a])
    store.apply([b, order(3, status="validation pending")])  # same state received again
    assert {e[2] for e in event_keys(store, ACC)} == {"put order req received", "validation pending"}
    assert len(event_keys(store, ACC)) == 2


@pytest.mark.parametrize("kind", ["position", "holding", "gtt_order"])
def test_full_states_newest_received_wins(store: PortfolioStore, kind: str) -> None:
    data, field = STATE_SAMPLES[kind]
    v1, v2 = dict(data, **{field: 1}), dict(data, **{field: 2})
    table = schema.STATE_TABLES[kind]
    store.apply([upd(kind, v2, recv=20), upd(kind, v1, recv=10)], account="A")  # same batch
    store.apply([upd(kind, v2, recv=20)], account="B")
    assert store.apply([upd(kind, v1, recv=10)], account="B") == ApplyResult(ignored=1)
    for account in ("A", "B"):
        (row,) = state_rows(store, table, account).values()
        assert row[field] == 2


@pytest.mark.parametrize("kind", ["position", "holding", "gtt_order"])
def test_snapshot_never_overwrites_live_received_after_it_began(store: PortfolioStore, kind: str) -> None:
    data, field = STATE_SAMPLES[kind]
    table = schema.STATE_TABLES[kind]
    snapshot = upd(kind, dict(data, **{field: 7}), recv=100, seq=10_000, source="snapshot")
    live_after = upd(kind, dict(data, **{field: 8}), recv=150, seq=500)
    live_before = upd(kind, dict(data, **{field: 6}), recv=90, seq=400)
    for batch in ([live_after], [snapshot], [live_before]):
        store.apply(batch, account="A")
    (row,) = state_rows(store, table, "A").values()
    assert (row[field], row["source"]) == (8, "stream")
    store.apply([live_before], account="B")
    store.apply([snapshot], account="B")
    (row,) = state_rows(store, table, "B").values()
    assert (row[field], row["source"]) == (7, "snapshot")


def test_bad_updates_are_rejected_and_the_rest_applied(store: PortfolioStore) -> None:
    bad = [
        upd("order", {k: v for k, v in order_message("1").items() if k != "status"}, recv=1),
        upd("order", order_message("2", quantity="lots"), recv=2),
        upd("order", order_message("3", filled_quantity=-5), recv=3),
        upd("order", order_message("4", price=float("nan")), recv=4),
        upd("order", order_message("5", order_timestamp="21/02/2024 14:40"), recv=5),
        upd("order", order_message("6", order_request_id="abc"), recv=6),
        upd("order", order_message("7" * 200), recv=7),
        upd("position", dict(POSITION, quantity=10**15), recv=8),
        upd("gtt_order", dict(GTT, created_at=1740641185), recv=9),
        upd("holding", {"quantity": 1}, recv=10),
        upd("trade", {"trade_id": "T1"}, recv=11),
    ]
    good = [order(20), upd("position", POSITION, recv=21)]
    result = store.apply([bad[0], good[0], *bad[1:], good[1]], account=ACC)
    assert result == ApplyResult(inserted=2, rejected=len(bad), events=1)
    rows = rejected(store)
    assert len(rows) == len(bad)
    errors = [r["error"] for r in rows]
    assert "invalid order '1'" in errors[0]
    assert "status" in errors[0]
    assert "quantity" in errors[1]
    assert "filled_quantity" in errors[2]
    assert "negative" in errors[2]
    assert "price" in errors[3]
    assert "timestamp" in errors[4]
    assert "order_request_id" in errors[5]
    assert "order_id is longer" in errors[6]
    assert "out of range" in errors[7]
    assert "created_at" in errors[8]
    assert "isin" in errors[9]
    assert "unknown update type" in errors[10]
    assert rows[1]["data"]["quantity"] == "lots"
    assert rows[1]["natural_key"] == "2"
    assert len(state_rows(store, schema.orders, ACC)) == 1
    assert len(state_rows(store, schema.positions, ACC)) == 1


def test_missing_account_for_position_raises_and_writes_nothing(store: PortfolioStore) -> None:
    with pytest.raises(ValueError, match=re.escape("position update 'NSE_EQ|INE848E01016:D' has no account")):
        store.apply([order(1), upd("position", POSITION, recv=2)])
    assert state_rows(store, schema.orders, ACC) == {}
    # The batch's connection (on PostgreSQL, mid-COPY when the error came) went back usable.
    assert store.apply([order(3)]).inserted == 1


def test_order_account_resolution(store: PortfolioStore) -> None:
    explicit = Update(
        update_type="order", data=order_message("9"), seq=1, received_at_us=BASE_RECEIVED_US, account="ZZ9"
    )
    no_user = order(2, user_id=None)
    store.apply([explicit, order(1), no_user], account=None)
    assert set(state_rows(store, schema.orders, "ZZ9")) == {("9",)}
    assert set(state_rows(store, schema.orders, ACC)) == {("240221025997024",)}
    assert "no account" in rejected(store)[0]["error"]


def test_progress_is_recorded_with_the_batch(store: PortfolioStore) -> None:
    store.apply([order(1), order(5, status="open")], stream_key="conn-a")
    store.apply([order(3)], stream_key="conn-a")
    progress = store.get_progress(ACC, "conn-a")
    assert progress is not None
    assert (progress["batches"], progress["updates"], progress["last_seq"]) == (2, 3, 5)
    assert (
        progress["last_received_at"]
        == Update(update_type="order", data={}, received_at_us=BASE_RECEIVED_US + 5).received_at
    )
    store.set_progress_state(ACC, "conn-a", {"watermark": 42})
    progress = store.get_progress(ACC, "conn-a")
    assert progress is not None
    assert progress["state"] == {"watermark": 42}
    assert progress["batches"] == 2
    assert store.get_progress(ACC, "other") is None


def test_keys_differing_only_in_case_are_different_objects(store: PortfolioStore) -> None:
    """PostgreSQL and SQLite compare text exactly; MariaDB's default collation would make these one
    row (schema version 3 converts the store's tables to ``utf8mb4_bin``)."""
    gtt_lower = upd("gtt_order", {**GTT, "gtt_order_id": "gtt-c25abc"}, recv=1)
    gtt_upper = upd("gtt_order", {**GTT, "gtt_order_id": "GTT-C25ABC", "quantity": 9}, recv=2)
    result = store.apply([gtt_lower, gtt_upper], account=ACC)
    assert (result.inserted, result.updated, result.ignored) == (2, 0, 0)
    rows = state_rows(store, schema.gtt_orders, ACC)
    assert {k: r["quantity"] for k, r in rows.items()} == {
        ("gtt-c25abc",): GTT["quantity"],
        ("GTT-C25ABC",): 9,
    }
