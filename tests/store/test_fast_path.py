"""The speed paths of ``apply()`` against the exact ones they replace.

- :func:`.validation.fast_view` (constrained ``msgspec`` twin of the typed view) must accept nothing
  the exact Python checks reject and build the very same rows: checked on arbitrary input, pure
  Python, no database.
- The SQLite writer counts inserts/updates without ``RETURNING`` (by rowids, or near the largest
  rowid by the keys stored before the write): checked with every key shape, on every backend, and on
  SQLite with both ways of counting.
- Rows written with the ``raw`` JSON text validation encoded equal rows written without it.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import ApplyResult, PortfolioStore, rows, schema, validation
from airflow_provider_upstox.store.upsert import WriteCounts, counts_from_revisions
from tests.store.helpers import state_rows
from tests.store.histories import BASE_RECEIVED_US, order_message
from tests.store.test_store import GTT, HOLDING, POSITION, upd

NOW = datetime(2024, 2, 21, 9, 0, tzinfo=timezone.utc)
SAMPLES: dict[str, dict[str, Any]] = {
    "order": order_message("240221000000001"),
    "position": POSITION,
    "holding": HOLDING,
    "gtt_order": GTT,
}
_edge_numbers = st.sampled_from(
    [10**13, 10**13 + 1, -(10**13), -(10**13) - 1, 1e13, 1.0000000000001e13, -1, 0, -0.0, 2**63, 1.5]
)
_edge_text = st.sampled_from(
    ["", " ", "\t", "a" * 16, "a" * 17, "a" * 64, "a" * 65, "x" * 16_384, "😀" * 16, "😀" * 17, "1", "1.5"]
)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    _edge_numbers,
    _edge_text,
    st.text(max_size=20),
    st.sampled_from(["2024-02-21 14:40:02", "0001-01-01 00:00:00", "2150-01-01 09:15:00", "bad", "9" * 19]),
    st.sampled_from([946_684_800_000_000, 946_684_799_999_999, 4_102_444_800_000_001, "1708500000000000"]),
    st.lists(st.dictionaries(st.sampled_from(["strategy", "status", "trigger_price"]), st.text(max_size=8))),
)


@st.composite
def _updates(draw: st.DrawFn) -> Update:
    kind = draw(st.sampled_from(sorted(SAMPLES)))
    data = copy.deepcopy(SAMPLES[kind])
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            data[draw(st.sampled_from(sorted(data)))] = draw(_values)
        else:
            data.pop(draw(st.sampled_from(sorted(data))), None)
    return Update(update_type=kind, data=data, seq=7, received_at_us=BASE_RECEIVED_US)


def _outcome(update: Update) -> tuple[Any, ...]:
    try:
        p = rows.prepare(update, "AB1234", NOW, 1)
    except InvalidUpdateError as exc:
        return ("rejected", str(exc))
    return ("stored", p.update_type, p.key, p.version, p.row, p.event, p.raw_json)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(update=_updates())
def test_fast_view_accepts_nothing_the_exact_checks_reject(
    update: Update, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _outcome(update)
    with monkeypatch.context() as m:
        m.setattr(validation, "fast_view", lambda _update: None)  # forces the exact path
        exact = _outcome(update)
    assert fast == exact


def test_fast_view_is_used_for_good_updates_and_declines_bad_ones() -> None:
    for kind, data in SAMPLES.items():
        assert validation.fast_view(upd(kind, data, recv=1)) is not None, kind
    too_long = order_message("240221000000002", product="x" * 17)  # products are String(16)
    assert validation.fast_view(upd("order", too_long, recv=1)) is None
    with pytest.raises(InvalidUpdateError, match="product is longer than 16"):
        rows.prepare(upd("order", too_long, recv=1), "AB1234", NOW, 1)
    blank = order_message(" ")
    assert validation.fast_view(upd("order", blank, recv=1)) is None


def test_counts_from_revisions() -> None:
    assert counts_from_revisions([1, 2, 1, 5], 6) == WriteCounts(inserted=2, updated=2, ignored=2)
    assert counts_from_revisions([], 3) == WriteCounts(0, 0, 3)


def _positions(recv: int, quantities: dict[str, int]) -> list[Update]:
    return [
        upd("position", dict(POSITION, instrument_token=f"NSE_EQ|{token}", day_buy_quantity=q), recv=recv)
        for token, q in quantities.items()
    ]


def test_counts_for_every_key_shape_without_returning(store: PortfolioStore) -> None:
    _check_counts_for_every_key_shape(store)


def test_sqlite_state_tables_are_rowid_tables(tmp_path: Path) -> None:
    """What the SQLite writer's rowid counting relies on: SQLite gives a new row the largest rowid + 1
    only in a table with rowids (not ``WITHOUT ROWID``) that are not a column's values."""
    store = PortfolioStore.from_url(f"sqlite:///{tmp_path / 'rowid.db'}")
    try:
        store.migrate()
        with store.engine.connect() as conn:
            for table in schema.STATE_TABLES.values():
                ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (table.name,))
                assert "WITHOUT ROWID" not in ddl.scalar_one().upper()
                assert len(table.primary_key.columns) > 1  # a composite key: the rowid is no column
                assert conn.exec_driver_sql(f"SELECT max(rowid) FROM {table.name}").scalar_one() is None
    finally:
        store.engine.dispose()


def test_sqlite_counts_near_the_largest_rowid(tmp_path: Path) -> None:
    """With a row at the largest rowid SQLite picks random rowids, so rowids cannot count the
    inserts: the writer counts the keys stored before the write instead, with the same results."""
    store = PortfolioStore.from_url(f"sqlite:///{tmp_path / 'full.db'}")
    try:
        store.migrate()
        _check_counts_for_every_key_shape(store, account="SEED")  # a row in every state table
        with store.engine.begin() as conn:
            for table in schema.STATE_TABLES.values():
                cols = [c.name for c in table.c]
                values = ", ".join("'FULL'" if c == "account" else c for c in cols)
                conn.exec_driver_sql(
                    f"INSERT INTO {table.name} (rowid, {', '.join(cols)}) "
                    f"SELECT {2**63 - 1}, {values} FROM {table.name} WHERE account = 'SEED' LIMIT 1"
                )
        _check_counts_for_every_key_shape(store, account="KEYS")
        with store.engine.connect() as conn:
            for table in schema.STATE_TABLES.values():  # the new rows got other (random) rowids
                top = conn.exec_driver_sql(f"SELECT account FROM {table.name} ORDER BY rowid DESC LIMIT 1")
                assert top.scalar_one() == "FULL"
    finally:
        store.engine.dispose()


def _check_counts_for_every_key_shape(store: PortfolioStore, account: str = "KEYS") -> None:
    """Inserted/updated/ignored per table (1-, 2- and 3-column natural keys) in one mixed batch."""
    first = [
        *_positions(1, {"A": 1, "B": 1}),
        upd("holding", HOLDING, recv=1),
        upd("gtt_order", GTT, recv=1),
        upd("order", order_message("240221000000010", status="open"), recv=1),
    ]
    assert store.apply(first, account=account) == ApplyResult(inserted=5, events=1)
    second = [
        *_positions(2, {"A": 2, "C": 1}),  # A: newer (more traded), C: new
        *_positions(0, {"B": 1}),  # B: received before the stored state: stale
        upd("holding", HOLDING, recv=0),  # stale
        upd("gtt_order", GTT, recv=2),  # newer
        upd("order", order_message("240221000000010", status="open"), recv=0),  # stale, known event
        upd("order", order_message("240221000000011", status="open"), recv=2),  # new
    ]
    assert store.apply(second, account=account) == ApplyResult(inserted=2, updated=2, ignored=3, events=1)
    stored = state_rows(store, schema.positions, account)
    assert {k: r["day_buy_quantity"] for k, r in stored.items()} == {
        ("NSE_EQ|A", "D"): 2,
        ("NSE_EQ|B", "D"): 1,
        ("NSE_EQ|C", "D"): 1,
    }


def test_writers_store_the_same_with_or_without_encoded_raw(store: PortfolioStore) -> None:
    """``raw`` from ``PreparedRow.raw_json`` (the apply path) equals ``raw`` encoded by the writer
    (each backend's own writer: the generic one on MariaDB encodes it always)."""
    update = upd("holding", dict(HOLDING, company_name="ünïcødé ✓ \\u0000"), recv=1)
    store.apply([update], account="WITH")
    prepared = rows.prepare(update, "WITHOUT", NOW, 1)
    with store.engine.begin() as conn:
        counts = store.writer.write_states(conn, "holding", [dataclasses.replace(prepared, raw_json=None)])
    assert counts == WriteCounts(1, 0, 0)
    with_raw = state_rows(store, schema.holdings, "WITH")
    assert with_raw == state_rows(store, schema.holdings, "WITHOUT")
    assert with_raw[("INE848E01016",)]["raw"]["company_name"] == "ünïcødé ✓ \\u0000"
