"""PostgreSQL: the psycopg 3 COPY path of ``apply()`` (orders streamed to a temporary stage while
the batch is validated) against a real server, its faults, and the psycopg2 fallback path.

Every test here writes through the real path and reads back what PostgreSQL stored.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import ApplyResult, PortfolioStore, rows, schema
from airflow_provider_upstox.store.upsert import WriteCounts
from airflow_provider_upstox.store.writers import PostgresCopyWriter, SqlAlchemyWriter
from tests.store.helpers import event_keys, state_rows
from tests.store.histories import order_message
from tests.store.test_bulk import _mixed_batch, _norm_json, _raw_rows
from tests.store.test_store import HOLDING, upd


def _orders(n: int, *, recv: int, status: str = "open", filled: int = 0) -> list[Update]:
    return [
        upd(
            "order",
            order_message(
                f"2402210{i:08d}", status=status, filled_quantity=filled, pending_quantity=10 - filled
            ),
            recv=recv + i,
        )
        for i in range(n)
    ]


def _terminate_other_sessions(url: sa.URL) -> int:
    """End every other session on the database (as a server restart would); returns how many."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as admin:
            return len(
                admin.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).all()
            )
    finally:
        engine.dispose()


def test_the_store_uses_the_copy_path_with_psycopg3(pg_store: PortfolioStore) -> None:
    assert isinstance(pg_store.writer, PostgresCopyWriter)
    written: list[Any] = []
    original = PostgresCopyWriter.write_orders

    def spy(self: PostgresCopyWriter, *args: Any) -> Any:
        written.append(original(self, *args))
        return written[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PostgresCopyWriter, "write_orders", spy)
        result = pg_store.apply(_orders(30, recv=1), account="COPY")
    assert written == [(WriteCounts(30, 0, 0), 30)]
    assert result == ApplyResult(inserted=30, events=30)


def test_in_batch_duplicates_are_resolved_by_the_stage_like_the_other_backends(
    pg_store: PortfolioStore,
) -> None:
    """The stage holds every accepted order update: DISTINCT ON must pick the newest state per
    order and the first update of each state, and count the losers as ignored."""
    old = _orders(20, recv=100)
    new = _orders(20, recv=200, status="complete", filled=10)
    again = _orders(20, recv=300)  # older data received later: loses to "complete"
    batch = [u for triple in zip(new, old, again, strict=True) for u in triple]
    result = pg_store.apply(batch, account="DUPS")
    assert result == ApplyResult(inserted=20, ignored=40, events=40)
    stored = state_rows(pg_store, schema.orders, "DUPS")
    assert {r["status"] for r in stored.values()} == {"complete"}
    # The "open" event keeps the first of its two updates (received at 100+i, not 300+i).
    with pg_store.engine.connect() as conn:
        seqs = conn.execute(
            sa.select(schema.order_events.c.seq).where(
                schema.order_events.c.account == "DUPS", schema.order_events.c.status == "open"
            )
        ).scalars()
        assert sorted(seqs) == [100 + i for i in range(20)]
    assert len(event_keys(pg_store, "DUPS")) == 40


@pytest.mark.parametrize(
    ("size", "noticed"),
    [
        # ~400 kB staged: COPY sends while the batch is still validated, a send fails.
        (400, "Streaming orders to the COPY stage failed"),
        # ~10 kB: all of it is still buffered; the loss shows when the COPY ends.
        (10, "Store batch lost its connection"),
    ],
)
def test_a_killed_connection_while_streaming_loses_nothing(
    pg_store: PortfolioStore, caplog: pytest.LogCaptureFixture, size: int, noticed: str
) -> None:
    """A real fault: the server ends the streaming session mid-batch (as a restart or an idle
    timeout would); the batch is still applied whole, on a new connection."""
    pg_store.apply(_orders(1, recv=1), account="WARM")  # a pooled connection exists
    victims = iter([False, True])  # the stream opens after the first order: kill after the second
    killed: list[int] = []
    original = rows.prepare

    def prepare_then_kill(*args: Any, **kwargs: Any) -> rows.PreparedRow:
        prepared = original(*args, **kwargs)
        if next(victims, False):
            killed.append(_terminate_other_sessions(pg_store.engine.url))
        return prepared

    batch = _orders(size, recv=10)
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.INFO):
        mp.setattr(rows, "prepare", prepare_then_kill)
        result = pg_store.apply(batch, account="KILL")
    assert killed == [1]  # the streaming session (the pool holds no other)
    assert result == ApplyResult(inserted=size, events=size)
    assert len(state_rows(pg_store, schema.orders, "KILL")) == size
    assert len(event_keys(pg_store, "KILL")) == size
    assert any(r.getMessage().startswith(noticed) for r in caplog.records)


def test_a_column_added_to_the_table_by_a_user_does_not_break_the_stage(pg_store: PortfolioStore) -> None:
    """The stage is built from the store's schema, not ``LIKE`` the table: a NOT NULL column with a
    default that a user added for their own purposes is filled by its default."""
    pg_store.apply(_orders(3, recv=1), account="ADD")  # the session's stage exists already
    with pg_store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE upstox_orders ADD COLUMN desk text NOT NULL DEFAULT 'equity'")
    result = pg_store.apply(_orders(5, recv=10, status="complete", filled=10), account="ADD")
    assert (result.inserted, result.updated) == (2, 3)
    with pg_store.engine.connect() as conn:
        desks = conn.exec_driver_sql("SELECT DISTINCT desk FROM upstox_orders WHERE account = 'ADD'").all()
    assert desks == [("equity",)]


def test_psycopg2_connections_take_the_sqlalchemy_path_and_store_the_same(
    pg_store: PortfolioStore, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An Airflow Postgres connection may use psycopg2: the store then writes through SQLAlchemy
    Core, says so once, and the stored rows equal those of the COPY path."""
    with caplog.at_level(logging.WARNING):
        legacy = PortfolioStore.from_url(sa.make_url(postgres_url).set(drivername="postgresql+psycopg2"))
    assert "through psycopg2" in caplog.text
    try:
        assert isinstance(legacy.writer, SqlAlchemyWriter)
        batch = _mixed_batch()
        assert pg_store.apply(batch, account="PG3") == legacy.apply(batch, account="PG2")
        assert pg_store.apply(batch, account="PG3") == legacy.apply(batch, account="PG2")  # replay
        for table in (*schema.STATE_TABLES.values(), schema.order_events):
            fast, slow = _raw_rows(pg_store, table, "PG3"), _raw_rows(legacy, table, "PG2")
            assert fast, table.name
            assert [_norm_json(r) for r in fast] == [_norm_json(r) for r in slow], table.name
    finally:
        legacy.engine.dispose()


def test_a_role_without_temporary_tables_falls_back_to_sqlalchemy(
    pg_store: PortfolioStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Hardened databases may revoke TEMPORARY from PUBLIC: the stage cannot exist, so the store
    says so once and writes through SQLAlchemy, losing nothing of the batch that found out."""
    url = pg_store.engine.url
    role = f"upx_notemp_{url.database[-8:]}"
    with pg_store.engine.begin() as conn:
        conn.exec_driver_sql(f"REVOKE TEMPORARY ON DATABASE {url.database} FROM PUBLIC")
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    restricted = PortfolioStore.from_url(url.set(username=role))
    assert isinstance(restricted.writer, PostgresCopyWriter)  # chosen before the privilege shows
    try:
        with caplog.at_level(logging.WARNING):
            first = restricted.apply(
                [*_orders(40, recv=1), upd("holding", HOLDING, recv=50)], account="NOTEMP"
            )
        assert first == ApplyResult(inserted=41, events=40)
        assert "TEMPORARY privilege" in caplog.text
        assert isinstance(restricted.writer, SqlAlchemyWriter)
        second = restricted.apply(_orders(40, recv=100, status="complete", filled=10), account="NOTEMP")
        assert second == ApplyResult(updated=40, events=40)
        assert {r["status"] for r in state_rows(pg_store, schema.orders, "NOTEMP").values()} == {"complete"}
    finally:
        restricted.engine.dispose()
        with pg_store.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
