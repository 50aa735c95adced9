"""Ordering of full-state objects: GTT orders rank finished rules, positions the day's traded quantity.

Any permutation (and batch split) of a realistic GTT or position history, with snapshots whose
request began before later live messages, ends in the true final state, on SQLite, PostgreSQL and
MariaDB. Holdings have no field that only grows: last received wins (documented, tested as such).
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import SCHEMA_VERSION, ApplyResult, PortfolioStore, schema
from airflow_provider_upstox.store.migrations import current_version
from tests.store.helpers import state_rows
from tests.store.histories import BASE_RECEIVED_US
from tests.store.test_store import GTT, HOLDING, POSITION, upd

DAY_US = 86_400_000_000
_accounts = itertools.count()


def _rule(strategy: str, status: str, price: float, side: str, order_id: str | None = None) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "status": status,
        "trigger_type": "IMMEDIATE",
        "trigger_price": price,
        "transaction_type": side,
        "message": "",
        "order_id": order_id,
        "trailing_gap": None,
    }


def _gtt(entry: str, target: str, stoploss: str, entry_price: float = 7.7) -> dict[str, Any]:
    return dict(
        GTT,
        rules=[
            _rule("ENTRY", entry, entry_price, "BUY", "250228010168535" if entry == "COMPLETED" else None),
            _rule("TARGET", target, 8.1, "SELL", "250228010168600" if target == "COMPLETED" else None),
            _rule("STOPLOSS", stoploss, 7.2, "SELL"),
        ],
    )


def gtt_history() -> tuple[list[Update], dict[str, Any]]:
    """Created, modified (still pending), entry filled, target hit (stop-loss cancelled); and two
    snapshots whose requests began between live messages and which arrive last."""
    created = _gtt("PENDING", "PENDING", "PENDING", 7.6)
    modified = _gtt("PENDING", "PENDING", "PENDING", 7.7)
    entered = _gtt("COMPLETED", "PENDING", "PENDING")
    done = _gtt("COMPLETED", "COMPLETED", "CANCELLED")
    updates = [
        upd("gtt_order", created, recv=10),
        upd("gtt_order", modified, recv=20),
        upd("gtt_order", entered, recv=30),
        upd("gtt_order", done, recv=40),
        upd("gtt_order", modified, recv=25, seq=1_000, source="snapshot"),  # began before "entered"
        upd("gtt_order", entered, recv=35, seq=1_001, source="snapshot"),  # began before "done"
    ]
    return updates, done


def _position(overnight: int, day_buy: int, day_sell: int) -> dict[str, Any]:
    return dict(
        POSITION,
        overnight_quantity=overnight,
        overnight_buy_quantity=overnight,
        day_buy_quantity=day_buy,
        day_sell_quantity=day_sell,
        quantity=overnight + day_buy - day_sell,
    )


def position_history() -> tuple[list[Update], dict[str, Any]]:
    """Fills over one trading day, then the next day's first state (day legs back to 0)."""
    next_day = _position(6, 0, 0)
    updates = [
        upd("position", _position(5, 0, 0), recv=10),
        upd("position", _position(5, 3, 0), recv=20),
        upd("position", _position(5, 3, 4), recv=30),
        upd("position", _position(5, 5, 4), recv=40),
        upd("position", _position(5, 3, 0), recv=25, seq=1_000, source="snapshot"),  # began before a fill
        upd("position", _position(5, 5, 4), recv=35, seq=1_001, source="snapshot"),  # read the next fill
        upd("position", next_day, recv=DAY_US + 10),
    ]
    return updates, next_day


HISTORIES = {"gtt_order": gtt_history, "position": position_history}


def _arrived(update: Update, position: int) -> Update:
    """*update* as received at arrival *position* (in-stream reordering: stamps follow arrival).

    Live messages are stamped when they arrive, on the trading day they belong to; a snapshot row
    keeps its stamp (when its request began, before any of these arrivals).
    """
    if update.source == "snapshot":
        return update
    day = (update.received_at_us - BASE_RECEIVED_US) // DAY_US * DAY_US
    return msgspec.structs.replace(
        update, received_at_us=BASE_RECEIVED_US + day + 100 + position, seq=10_000 + position
    )


@st.composite
def scrambled(draw: st.DrawFn) -> tuple[str, list[list[Update]], dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(HISTORIES)))
    updates, final = HISTORIES[kind]()
    shuffled = list(draw(st.permutations(updates)))
    for i in draw(st.lists(st.integers(0, len(updates) - 1), max_size=3)):  # duplicates anywhere
        shuffled.insert(draw(st.integers(0, len(shuffled))), updates[i])
    shuffled = [_arrived(u, i) for i, u in enumerate(shuffled)]
    batches: list[list[Update]] = []
    while shuffled:
        size = draw(st.integers(1, len(shuffled)))
        batches.append(shuffled[:size])
        shuffled = shuffled[size:]
    return kind, batches, final


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scrambled())
def test_any_arrival_order_ends_in_the_true_final_state(store: PortfolioStore, case: Any) -> None:
    """Messages reordered in the stream (stamped as they arrive), duplicated, split into batches."""
    kind, batches, final = case
    account = f"PERM{next(_accounts)}"
    for batch in batches:
        store.apply(batch, account=account)
    (row,) = state_rows(store, schema.STATE_TABLES[kind], account).values()
    assert row["raw"] == final


@pytest.mark.parametrize("kind", sorted(HISTORIES))
def test_true_order_ends_in_the_final_state_one_by_one_and_in_one_batch(
    store: PortfolioStore, kind: str
) -> None:
    updates, final = HISTORIES[kind]()
    for update in updates:
        store.apply([update], account="ONE")
    store.apply(updates, account="BATCH")
    store.apply(updates[::-1], account="REVERSED")  # stamps kept: received_at decides ties only
    for account in ("ONE", "BATCH", "REVERSED"):
        (row,) = state_rows(store, schema.STATE_TABLES[kind], account).values()
        assert row["raw"] == final


def test_stale_gtt_received_after_a_newer_one_is_ignored(store: PortfolioStore) -> None:
    """BUG 3 of the reliability run: a reordered PENDING state must not revive a CANCELLED GTT."""
    cancelled = upd("gtt_order", _gtt("CANCELLED", "CANCELLED", "CANCELLED"), recv=20)
    stale = upd("gtt_order", _gtt("PENDING", "PENDING", "PENDING"), recv=30)  # received later
    assert store.apply([cancelled], account="A") == ApplyResult(inserted=1)
    assert store.apply([stale], account="A") == ApplyResult(ignored=1)
    store.apply([stale, cancelled], account="B")  # and in one batch
    for account in ("A", "B"):
        (row,) = state_rows(store, schema.gtt_orders, account).values()
        assert [r["status"] for r in row["rules"]] == ["CANCELLED"] * 3


def test_gtt_snapshot_vs_live(store: PortfolioStore) -> None:
    """Equal progress: a snapshot that began before a live message loses to it; more progress wins."""
    live = upd("gtt_order", _gtt("COMPLETED", "PENDING", "PENDING"), recv=150, seq=500)
    same = upd(
        "gtt_order", _gtt("COMPLETED", "PENDING", "PENDING", 7.9), recv=100, seq=900, source="snapshot"
    )
    ahead = upd("gtt_order", _gtt("COMPLETED", "FAILED", "CANCELLED"), recv=100, seq=901, source="snapshot")
    store.apply([live], account="A")
    assert store.apply([same], account="A") == ApplyResult(ignored=1)
    assert store.apply([ahead], account="A") == ApplyResult(updated=1)
    (row,) = state_rows(store, schema.gtt_orders, "A").values()
    assert (row["source"], row["rules"][1]["status"]) == ("snapshot", "FAILED")


def test_stale_position_within_a_day_is_ignored_and_a_new_day_wins(store: PortfolioStore) -> None:
    newer = upd("position", _position(5, 5, 4), recv=40)
    stale = upd("position", _position(5, 3, 0), recv=50)  # fewer traded, received later: reordered
    next_day = upd("position", _position(6, 0, 0), recv=DAY_US)
    assert store.apply([newer], account="A") == ApplyResult(inserted=1)
    assert store.apply([stale], account="A") == ApplyResult(ignored=1)
    assert store.apply([next_day], account="A") == ApplyResult(updated=1)
    assert store.apply([newer, stale], account="A") == ApplyResult(ignored=2)
    (row,) = state_rows(store, schema.positions, "A").values()
    assert (row["overnight_quantity"], row["day_buy_quantity"]) == (6, 0)


def test_holding_last_received_wins(store: PortfolioStore) -> None:
    """Documented limitation: no holding field only grows, so a reordered holding state wins."""
    newer = upd("holding", dict(HOLDING, quantity=5), recv=40)
    older_received_later = upd("holding", dict(HOLDING, quantity=3), recv=50)
    store.apply([newer], account="A")
    assert store.apply([older_received_later], account="A") == ApplyResult(updated=1)
    (row,) = state_rows(store, schema.holdings, "A").values()
    assert row["quantity"] == 3


def test_upgrade_from_schema_1_keeps_positions_and_ranks_new_states(db_url: str) -> None:
    """A store created by schema 1 (16-byte position version) is migrated in place; its position
    rows keep their data and the next state of each replaces them, as last-received-wins did."""
    store = PortfolioStore.from_url(db_url)
    try:
        store.migrate()
        store.apply([upd("position", _position(5, 5, 4), recv=40)], account="A")
        legacy = (40 + 1_708_500_000_000_000).to_bytes(8, "big") + (40).to_bytes(8, "big")
        positions = schema.positions
        with store.engine.begin() as conn:
            conn.execute(sa.update(positions).values(version=legacy))
            if conn.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("ALTER TABLE upstox_positions MODIFY version VARBINARY(16) NOT NULL")
            conn.execute(sa.update(schema.store_meta).values(value="1"))
        upgraded = PortfolioStore.from_url(db_url)
        try:
            assert upgraded.migrate() == SCHEMA_VERSION >= 2
            with upgraded.engine.connect() as conn:
                assert current_version(conn) == SCHEMA_VERSION
            (row,) = state_rows(upgraded, positions, "A").values()
            assert row["version"] == legacy
            assert upgraded.apply([upd("position", _position(5, 3, 0), recv=30)], account="A").updated == 1
            assert upgraded.apply([upd("position", _position(5, 2, 0), recv=60)], account="A").ignored == 1
            (row,) = state_rows(upgraded, positions, "A").values()
            assert len(row["version"]) == schema.POSITION_VERSION_LEN
        finally:
            upgraded.engine.dispose()
    finally:
        store.engine.dispose()
