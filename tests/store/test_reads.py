"""The store's typed entry points for the operators, on SQLite, PostgreSQL and MariaDB.

Stored objects for reconciliation (``read_stored_objects``), operator progress records
(``load_operator_progress`` / ``save_operator_progress``) and the reconciliation log
(``start_reconciliation_run`` / ``finish_reconciliation_run``), including databases whose
reconciliation tables were created by the operator itself before schema version 4.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.reconciliation import COMPARED_FIELDS, EXTRA, MISMATCH, MISSING, Discrepancy
from airflow_provider_upstox.store import SCHEMA_VERSION, PortfolioStore, schema
from airflow_provider_upstox.store.migrations import current_version
from airflow_provider_upstox.store.reads import OPERATOR_ACCOUNT, OVERLAID_COLUMNS
from airflow_provider_upstox.store.schema import UTCDateTime
from tests.store.histories import BASE_RECEIVED_US, order_message
from tests.store.test_store import GTT, HOLDING, POSITION


def _update(update_type: str, data: dict[str, Any], seq: int) -> Update:
    return Update(update_type=update_type, data=data, seq=seq, received_at_us=BASE_RECEIVED_US + seq)


# ---------------------------------------------------------------- stored objects


def test_stored_objects_are_raw_json_overlaid_with_typed_columns(store: PortfolioStore) -> None:
    store.apply(
        [
            _update("order", order_message("1", status="open", filled_quantity="2", quantity="10"), 1),
            _update("order", order_message("2", status="complete", filled_quantity=10), 2),
            _update("position", POSITION, 3),
            _update("holding", HOLDING, 4),
            _update("gtt_order", GTT, 5),
        ],
        account="A",
    )
    store.apply([_update("order", order_message("9"), 6)], account="OTHER")

    orders = store.read_stored_objects("A", "order")
    assert set(orders) == {"1", "2"}  # keyed like the snapshot; the other account's order is not here
    first = orders["1"]
    # The raw JSON said "2" and "10"; the typed columns the ordering rule keeps say 2 and 10.
    assert (first["filled_quantity"], first["quantity"], first["status"]) == (2, 10, "open")
    assert first["tag"] == "stratégie-1"  # everything else is the raw object as received
    assert first["order_timestamp"] == "2024-02-21 14:40:02"
    assert not {"raw", "version", "revision"} & set(first)  # no bookkeeping columns
    assert store.read_state("A")["order"]["1"]["raw"]["filled_quantity"] == "2"

    positions = store.read_stored_objects("A", "position")
    assert list(positions) == ["NSE_EQ|INE848E01016:D"]
    assert positions["NSE_EQ|INE848E01016:D"]["day_buy_quantity"] == 2
    assert store.read_stored_objects("A", "holding")["INE848E01016"]["quantity"] == 3
    gtt = store.read_stored_objects("A", "gtt_order")["GTT-CU25270200024002"]
    assert gtt["rules"] == GTT["rules"]
    assert store.read_stored_objects("NOBODY", "holding") == {}


def test_stored_objects_of_an_unknown_type_are_refused(store: PortfolioStore) -> None:
    with pytest.raises(ValueError, match="no stored objects of type 'trade'"):
        store.read_stored_objects("A", "trade")


def test_every_compared_field_is_a_typed_column_or_a_raw_structure() -> None:
    """Reconciliation compares typed values; a new compared field needs its column overlaid."""
    for update_type, fields in COMPARED_FIELDS.items():
        table = schema.STATE_TABLES[update_type]
        for field in fields:
            if field == "rule_statuses":  # derived from the raw GTT rules
                continue
            assert field in OVERLAID_COLUMNS, (update_type, field)
            assert field in table.c, (update_type, field)


# ---------------------------------------------------------------- operator progress


def test_operator_progress_round_trip_and_last_write_wins(store: PortfolioStore) -> None:
    assert store.load_operator_progress("dag/task/run") is None
    store.save_operator_progress("dag/task/run", {"batches": 1, "acked_seq": 7, "note": "é"})
    store.save_operator_progress("dag/task/other", {"batches": 5})
    assert store.load_operator_progress("dag/task/run") == {"batches": 1, "acked_seq": 7, "note": "é"}
    store.save_operator_progress("dag/task/run", {"batches": 2})
    assert store.load_operator_progress("dag/task/run") == {"batches": 2}
    assert store.load_operator_progress("dag/task/other") == {"batches": 5}


def test_operator_progress_is_the_stream_progress_row_of_the_pseudo_account(store: PortfolioStore) -> None:
    """Records written before these methods existed (same table, account, key) are read as they are."""
    store.set_progress_state(OPERATOR_ACCOUNT, "asset_events/upstox_default", {"after": "2025-03-03T09:00"})
    assert store.load_operator_progress("asset_events/upstox_default") == {"after": "2025-03-03T09:00"}
    store.save_operator_progress("k", {"x": 1})
    row = store.get_progress(OPERATOR_ACCOUNT, "k")
    assert row is not None
    assert row["state"] == {"x": 1}


def test_operator_progress_in_bulk_matches_one_by_one(store: PortfolioStore) -> None:
    """One persist task keeps a watermark per watched asset: loaded in one query, saved in one
    transaction, and the same records as the one-by-one methods (long keys shortened alike)."""
    long_key = "asset_events:" + "g" * 300
    keys = [f"asset_events:upstox_events__c{i}" for i in range(1200)] + [long_key]  # over one IN list
    store.save_operator_progress("asset_events:upstox_events__c3", {"old": True})
    store.save_operator_progress_many(
        {k: {"i": n} for n, k in enumerate(keys) if n % 2 == 0 or k == long_key}
    )
    loaded = store.load_operator_progress_many([*keys, "absent"])
    saved = {k for n, k in enumerate(keys) if n % 2 == 0 or k == long_key}
    assert sorted(loaded) == sorted(saved | {"asset_events:upstox_events__c3"})
    assert loaded["asset_events:upstox_events__c3"] == {"old": True}  # untouched (odd)
    assert store.load_operator_progress(long_key) == {"i": len(keys) - 1}
    assert store.load_operator_progress("asset_events:upstox_events__c4") == {"i": 4}
    store.save_operator_progress_many({"asset_events:upstox_events__c4": {"i": -4}})  # last write wins
    assert store.load_operator_progress_many(["asset_events:upstox_events__c4"]) == {
        "asset_events:upstox_events__c4": {"i": -4}
    }


def test_long_operator_progress_keys_are_shortened_stably_and_uniquely(store: PortfolioStore) -> None:
    long_a = "dag/" + "a" * 300 + "/1"
    long_b = "dag/" + "a" * 300 + "/2"  # same first 191 characters
    store.save_operator_progress(long_a, {"n": 1})
    store.save_operator_progress(long_b, {"n": 2})
    assert store.load_operator_progress(long_a) == {"n": 1}
    assert store.load_operator_progress(long_b) == {"n": 2}
    # The stored key is the one operators/_db.py wrote before (prefix, "#", SHA-1): old records stay readable.
    stored_key = f"{long_a[:150]}#{hashlib.sha1(long_a.encode()).hexdigest()}"
    assert len(stored_key) == 191
    row = store.get_progress(OPERATOR_ACCOUNT, stored_key)
    assert row is not None
    assert row["state"] == {"n": 1}


# ---------------------------------------------------------------- reconciliation log


def _runs(store: PortfolioStore) -> list[dict[str, Any]]:
    runs = schema.reconciliation_runs
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(runs).order_by(runs.c.run_id)).mappings()]


def _discrepancies(store: PortfolioStore, run_id: int) -> list[dict[str, Any]]:
    t = schema.reconciliation_discrepancies
    with store.engine.connect() as conn:
        query = sa.select(t).where(t.c.run_id == run_id).order_by(t.c.id)
        return [dict(r) for r in conn.execute(query).mappings()]


def test_reconciliation_run_is_recorded_with_every_discrepancy(store: PortfolioStore) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    run_id = store.start_reconciliation_run(
        account="A", update_types=["order", "position"], upstox_conn_id="upstox_default", dag_id="d"
    )
    (running,) = _runs(store)
    assert (running["run_id"], running["status"], running["update_types"]) == (
        run_id,
        "running",
        "order,position",
    )
    assert running["finished_at"] is None
    assert running["started_at"] >= before
    assert running["started_at"].tzinfo is not None  # aware UTC on every backend

    found = [
        Discrepancy("order", "1", MISMATCH, "filled_quantity", 2.0, 5.0),
        Discrepancy("order", "2", MISSING, snapshot_value={"order_id": "2", "price": Decimal("1.5")}),
        Discrepancy("position", "X:D", EXTRA, db_value={"quantity": 3}),
    ]
    store.finish_reconciliation_run(
        run_id,
        account="A",
        discrepancies=found,
        repaired_keys={("order", "2"), ("holding", "elsewhere")},
        compared=7,
        status="discrepancies",
    )
    (run,) = _runs(store)
    assert (run["status"], run["compared"], run["discrepancies"], run["repaired"]) == (
        "discrepancies",
        7,
        3,
        1,
    )
    assert run["finished_at"] >= run["started_at"]
    rows = _discrepancies(store, run_id)
    assert [(r["update_type"], r["natural_key"], r["kind"], r["field"], r["repaired"]) for r in rows] == [
        ("order", "1", MISMATCH, "filled_quantity", False),
        ("order", "2", MISSING, None, True),
        ("position", "X:D", EXTRA, None, False),
    ]
    assert json.loads(rows[0]["db_value"]) == 2.0
    assert json.loads(rows[1]["snapshot_value"]) == {"order_id": "2", "price": "1.5"}
    assert rows[1]["db_value"] is None
    assert {r["account"] for r in rows} == {"A"}


def test_failed_run_is_closed_as_error(store: PortfolioStore) -> None:
    first = store.start_reconciliation_run(account="A", update_types=["order"])
    second = store.start_reconciliation_run(account="B", update_types=["holding"])
    assert second > first
    store.finish_reconciliation_run(
        first, account="A", discrepancies=[], repaired_keys=(), compared=0, status="error"
    )
    runs = {r["run_id"]: r for r in _runs(store)}
    assert runs[first]["status"] == "error"
    assert runs[second]["status"] == "running"
    assert _discrepancies(store, first) == []


# ---------------------------------------------------------------- databases from before schema version 4


def _pre_version_4_tables() -> tuple[sa.MetaData, sa.Table]:
    """The two tables as operators/reconciliation.py created them before schema version 4.

    Same names and columns as today's; times were plain ``DateTime(timezone=True)`` (``DATETIME``
    without fractions on MySQL/MariaDB), and nothing had a comment.
    """
    old = sa.MetaData()
    for table in schema.RECONCILIATION_TABLES:
        copy = table.to_metadata(old)
        copy.comment = None
        for column in copy.c:
            column.comment = None
            if isinstance(column.type, UTCDateTime):
                column.type = sa.DateTime(timezone=True)
    return old, old.tables[schema.reconciliation_runs.name]


_old, _OLD_RUNS = _pre_version_4_tables()


def _as_version_3(store: PortfolioStore, *, old_tables: bool) -> None:
    """Turn a migrated store back into what schema version 3 plus, optionally, the old operator left."""
    with store.engine.begin() as conn:
        for table in reversed(schema.RECONCILIATION_TABLES):
            table.drop(conn)
        meta = schema.store_meta
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="3"))
        if old_tables:
            _old.create_all(conn)
            conn.execute(
                _OLD_RUNS.insert().values(
                    account="A",
                    started_at=datetime(2025, 3, 3, 10, 15, tzinfo=timezone.utc),
                    update_types="order",
                    status="clean",
                )
            )


@pytest.mark.parametrize("old_tables", [True, False], ids=["tables-made-by-the-operator", "no-tables"])
def test_migration_4_keeps_or_creates_the_reconciliation_tables(db_url: str, old_tables: bool) -> None:
    store = PortfolioStore.from_url(db_url)
    try:
        store.migrate()
        _as_version_3(store, old_tables=old_tables)
        with store.engine.connect() as conn:
            assert current_version(conn) == 3
        assert store.migrate() == SCHEMA_VERSION == 6
        assert store.migrate() == 6  # re-runnable
        run_id = store.start_reconciliation_run(account="A", update_types=["order"])
        store.finish_reconciliation_run(
            run_id,
            account="A",
            discrepancies=[Discrepancy("order", "Order-1", EXTRA, db_value={"order_id": "Order-1"})],
            repaired_keys=(),
            compared=1,
            status="discrepancies",
        )
        runs = _runs(store)
        assert [r["status"] for r in runs] == (["clean"] if old_tables else []) + ["discrepancies"]
        if old_tables:
            assert runs[0]["started_at"] == datetime(2025, 3, 3, 10, 15, tzinfo=timezone.utc)
        # Case-sensitive text on every backend, like every other table (MySQL/MariaDB: step 4's collation).
        store.finish_reconciliation_run(
            store.start_reconciliation_run(account="A", update_types=["order"]),
            account="A",
            discrepancies=[Discrepancy("order", "ORDER-1", EXTRA)],
            repaired_keys=(),
            compared=1,
            status="discrepancies",
        )
        t = schema.reconciliation_discrepancies
        with store.engine.connect() as conn:
            hits = conn.execute(sa.select(sa.func.count()).where(t.c.natural_key == "Order-1")).scalar()
        assert hits == 1
    finally:
        store.engine.dispose()
