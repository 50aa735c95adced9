"""One bad update never fails its batch: what a database would refuse is rejected per update.

The same suite on SQLite, PostgreSQL and MariaDB: every case here is rejected (or stored) alike on
all three, although only some backends would refuse the value (PostgreSQL cannot store U+0000 in
``text``/``jsonb``; MariaDB's ``TEXT`` holds 64 KiB; a signed BIGINT holds < 2**63...).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import ApplyResult, PortfolioStore, schema
from airflow_provider_upstox.store.rows import TEXT_LIMIT
from tests.store.helpers import rejected, state_rows
from tests.store.histories import BASE_RECEIVED_US, order_message
from tests.store.test_store import GTT, HOLDING, POSITION, upd

ACC = "AB1234"


def _good_batch() -> list[Update]:
    return [
        upd("order", order_message("240221000000100", status="open"), recv=1),
        upd("position", POSITION, recv=2),
        upd("holding", HOLDING, recv=3),
        upd("gtt_order", GTT, recv=4),
    ]


def _assert_good_applied(store: PortfolioStore, account: str = ACC) -> None:
    state = store.read_state(account)
    assert "240221000000100" in state["order"]
    assert set(state["position"]) == {"NSE_EQ|INE848E01016:D"}
    assert set(state["holding"]) == {"INE848E01016"}
    assert set(state["gtt_order"]) == {"GTT-CU25270200024002"}


NUL_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("order", "240221000000201", order_message("240221000000201", tag="a\x00b"), "tag contains a NUL"),
    ("order", "240221000000202", {**order_message("240221000000202"), "\x00": 1}, "key '\\x00' contains"),
    ("order", "240221000000203", order_message("240221000000203", status_message="x\x00"), "status_message"),
    ("order", "240221000000204", {**order_message("240221000000204"), "extra": {"deep": ["ok", "\x00"]}},
     "extra.deep[1] contains a NUL"),
    ("position", "NSE_EQ|INE848E01016:CO", dict(POSITION, product="CO", exchange="NSE\x00"),
     "exchange contains"),
    ("holding", "INE000000009", dict(HOLDING, isin="INE000000009", company_name="\x00"), "company_name"),
    ("gtt_order", "GTT-NUL",
     dict(GTT, gtt_order_id="GTT-NUL", rules=[dict(GTT["rules"][0], message="m\x00")]),
     "rules[0].message contains a NUL"),
    ("order", "2402\x0021", order_message("2402\x0021"), "order_id contains a NUL"),
]  # fmt: skip


def test_nul_character_is_a_clean_per_update_rejection(store: PortfolioStore) -> None:
    bad = [upd(kind, data, recv=10 + i) for i, (kind, _key, data, _why) in enumerate(NUL_CASES)]
    result = store.apply([*bad[:3], *_good_batch(), *bad[3:]], account=ACC)

    assert result == ApplyResult(inserted=4, rejected=len(NUL_CASES), events=1)
    _assert_good_applied(store)
    rows = rejected(store)
    assert len(rows) == len(NUL_CASES)
    for row, (kind, key, _data, why) in zip(rows, NUL_CASES, strict=True):
        assert row["update_type"] == kind
        assert why in row["error"]
        assert f"invalid {kind} " in row["error"]
        assert "NUL character (U+0000)" in row["error"]
        assert row["natural_key"] == key.replace("\x00", "\\u0000")
        assert "\x00" not in repr(row)  # what is stored holds the escape, not the character
    assert rows[0]["data"]["tag"] == "a\\u0000b"
    assert rows[1]["data"]["\\u0000"] == 1
    assert rows[3]["data"]["extra"] == {"deep": ["ok", "\\u0000"]}


def test_a_literal_backslash_u0000_text_is_stored_as_is(store: PortfolioStore) -> None:
    """Only the NUL character is refused, not the six characters ``\\u0000`` of a user's tag."""
    text = "C:\\u0000\\tag"
    result = store.apply([upd("order", order_message("240221000000301", tag=text), recv=1)], account=ACC)
    assert result.inserted == 1
    assert store.read_state(ACC)["order"]["240221000000301"]["tag"] == text


def _envelope(**fields: Any) -> Update:
    base: dict[str, Any] = {
        "update_type": "order",
        "data": order_message("240221000000400"),
        "seq": 7,
        "received_at_us": BASE_RECEIVED_US,
    }
    return Update(**(base | fields))


OUT_OF_RANGE: list[tuple[Update, str]] = [
    (_envelope(seq=2**63), "seq=9223372036854775808 is out of range"),
    (_envelope(seq=2**64 + 1), "seq="),
    (_envelope(seq=-1), "seq=-1"),
    (_envelope(connection_epoch=2**31), "connection_epoch="),
    (_envelope(received_at_us=10**20), "received_at_us="),
    (_envelope(source="replay"), "source='replay'"),
    (_envelope(account="A" * 65), "account is longer than 64"),
    (_envelope(account="A\x00"), "account contains a NUL"),
    (_envelope(data=order_message("240221000000401", order_timestamp="0001-01-01 00:00:00")), "timestamp"),
    (_envelope(data=order_message("240221000000402", exchange_timestamp="2150-01-01 09:15:00")),
     "exchange_timestamp='2150-01-01 09:15:00' is not between 2000 and 2100"),
    (_envelope(data=order_message("240221000000403", order_request_id="\u00b2")), "order_request_id"),
    (_envelope(data=order_message("240221000000404", tag="t" * (TEXT_LIMIT + 1))),
     f"tag is longer than {TEXT_LIMIT}"),
    (_envelope(data=order_message("240221000000405", tag="\ud800")), "not storable JSON text"),
    (_envelope(data={**order_message("240221000000406"), "\udfff": 1}), "not storable JSON text"),
    (_envelope(data=order_message("240221000000407", quantity=10**19)), "quantity"),
    (_envelope(data=order_message("240221000000408", price=1e14)), "out of range"),
    (_envelope(update_type="position", data=dict(POSITION, day_buy_quantity=2**63)), "day_buy_quantity="),
    (_envelope(update_type="gtt_order", data=dict(GTT, expires_at=2**63)), "expires_at="),
]  # fmt: skip


def test_values_out_of_column_range_are_rejected_before_the_database(store: PortfolioStore) -> None:
    bad = [u for u, _why in OUT_OF_RANGE]
    result = store.apply([*bad, *_good_batch()], account=ACC)
    assert result == ApplyResult(inserted=4, rejected=len(bad), events=1)
    _assert_good_applied(store)
    rows = rejected(store)
    assert len(rows) == len(bad)
    for row, (update, why) in zip(rows, OUT_OF_RANGE, strict=True):
        assert why in row["error"], (update, row["error"])
        assert len(row["error"]) <= 4000
    assert rows[0]["seq"] is None  # not storable in the reject row either
    assert rows[7]["account"] == "A\\u0000"
    assert rows[12]["data"]["tag"] == "?"  # the lone surrogate, replaced


def test_values_at_the_edge_of_their_columns_are_stored_exactly(store: PortfolioStore) -> None:
    edge = order_message(
        "240221000000500",
        price=9_999_999_999_999.5,
        quantity=10**13,
        tag="t" * TEXT_LIMIT,
        order_request_id="9" * 18,
        exchange_timestamp="2099-12-31 23:59:59",
    )
    data = {**edge, "unknown_big_number": 10**30, "unknown_tiny": 1e-300}
    result = store.apply([upd("order", data, recv=1, seq=2**63 - 1)], account=ACC)
    assert result.inserted == 1
    row = store.read_state(ACC)["order"]["240221000000500"]
    assert str(row["price"]) == "9999999999999.500000"
    assert (row["quantity"], len(row["tag"]), row["seq"]) == (10**13, TEXT_LIMIT, 2**63 - 1)
    assert row["raw"]["unknown_big_number"] == 10**30


def test_a_value_the_database_refuses_is_isolated_and_the_rest_applied(store: PortfolioStore) -> None:
    """The net under validation: a DataError (here from a column narrowed behind the store's back)
    rejects only the update(s) carrying the refused value, found by bisection."""
    dialect = store.engine.dialect.name
    if dialect == "sqlite":
        pytest.skip("SQLite enforces no column length: it never refuses such a value")
    with store.engine.begin() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql("ALTER TABLE upstox_orders ALTER COLUMN tag TYPE varchar(8)")
        else:
            conn.exec_driver_sql("ALTER TABLE upstox_orders MODIFY tag VARCHAR(8)")
    orders = [
        upd(
            "order", order_message(f"24022100000060{i}", tag="longer-than-8" if i in (2, 5) else "ok"), recv=i
        )
        for i in range(8)
    ]
    result = store.apply([*orders, *_good_batch()[1:]], account=ACC, stream_key="iso")
    assert (result.inserted, result.rejected) == (6 + 3, 2)
    assert set(store.read_state(ACC)["order"]) == {f"24022100000060{i}" for i in (0, 1, 3, 4, 6, 7)}
    rows = rejected(store)
    assert [r["natural_key"] for r in rows] == ["240221000000602", "240221000000605"]
    assert all("the database refused a value" in r["error"] for r in rows)
    progress = store.get_progress(ACC, "iso")
    assert progress is not None
    assert (progress["batches"], progress["updates"]) == (1, 11)


def test_caller_errors_raise_and_write_nothing(store: PortfolioStore) -> None:
    with pytest.raises(ValueError, match="longer than 64"):
        store.apply(_good_batch(), account="X" * 65)
    with pytest.raises(ValueError, match="stream_key"):
        store.apply(_good_batch(), account=ACC, stream_key="k" * 192)
    with store.engine.connect() as conn:
        for table in schema.STATE_TABLES.values():
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0
    assert state_rows(store, schema.orders, ACC) == {}
