"""The seams of the write path: the writer chosen per database, and the transaction policy's
retries and bisection, against real faults (a busy SQLite file, a killed PostgreSQL session, a
real PostgreSQL deadlock)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_upstox.store import PortfolioStore
from airflow_provider_upstox.store.transactions import TransactionPolicy, is_retryable
from airflow_provider_upstox.store.writers import (
    PostgresCopyWriter,
    SqlAlchemyWriter,
    SqliteWriter,
    writer_for,
)


@pytest.mark.parametrize(
    ("url", "writer"),
    [
        ("sqlite:///{tmp}/w.db", SqliteWriter),
        ("postgresql+psycopg://u@127.0.0.1:1/db", PostgresCopyWriter),
        ("postgresql+psycopg2://u@127.0.0.1:1/db", SqlAlchemyWriter),
        ("mysql+pymysql://u@127.0.0.1:1/db", SqlAlchemyWriter),
    ],
)
def test_the_writer_is_chosen_once_per_dialect_and_driver(
    url: str, writer: type, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No connection is needed to choose (create_engine does not connect)."""
    engine = sa.create_engine(url.format(tmp=tmp_path))
    try:
        with caplog.at_level(logging.WARNING):
            assert isinstance(writer_for(engine), writer)
            store = PortfolioStore(engine)
        assert isinstance(store.writer, writer)
        slow_pg = url.startswith("postgresql+psycopg2")
        assert ("several times slower" in caplog.text) is slow_pg
    finally:
        engine.dispose()


def _plain_sqlite(path: Path) -> sa.Engine:
    """An engine whose connections do not wait for a lock (no busy timeout): busy at once."""
    return sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})


def test_a_busy_sqlite_database_is_retried_until_the_lock_is_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    engine = _plain_sqlite(path)
    policy = TransactionPolicy(engine, delay=lambda attempt: 0.05)
    attempts: list[int] = []

    def work(conn: Connection) -> int:
        attempts.append(1)
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        return len(attempts)

    release = threading.Timer(0.2, holder.execute, args=("COMMIT",))
    release.start()
    try:
        with caplog.at_level(logging.INFO):
            assert policy.run(work) >= 1
    finally:
        release.join()
        holder.close()
        engine.dispose()
    assert "hit a lock conflict" in caplog.text  # BEGIN IMMEDIATE itself was busy, then retried
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)
    check.close()


def test_an_error_that_is_not_a_conflict_is_not_retried(tmp_path: Path) -> None:
    engine = _plain_sqlite(tmp_path / "e.db")
    policy = TransactionPolicy(engine, delay=lambda attempt: 0.0)
    calls: list[int] = []

    def work(conn: Connection) -> None:
        calls.append(1)
        conn.exec_driver_sql("INSERT INTO missing VALUES (1)")

    with pytest.raises(sa.exc.OperationalError) as info:
        policy.run(work)
    assert not is_retryable(info.value)
    assert calls == [1]
    engine.dispose()


def test_driver_errors_come_out_as_sqlalchemy_errors(tmp_path: Path) -> None:
    """A driver-level writer's own error is translated at the policy's boundary."""
    engine = _plain_sqlite(tmp_path / "d.db")
    policy = TransactionPolicy(engine)

    def work(conn: Connection) -> None:
        conn.connection.driver_connection.execute("SELECT * FROM missing")  # type: ignore[union-attr]

    with pytest.raises(sa.exc.OperationalError) as info:
        policy.run(work)
    assert isinstance(info.value.orig, sqlite3.OperationalError)
    engine.dispose()


def test_a_lost_postgresql_connection_is_retried_once_on_a_new_one(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(postgres_url)
    policy = TransactionPolicy(engine, delay=lambda attempt: 0.0)
    pids: list[int] = []

    def work(conn: Connection, kills: int) -> int:
        pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        pids.append(pid)
        if len(pids) <= kills:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        return pid

    try:
        with caplog.at_level(logging.INFO):
            survivor = policy.run(lambda conn: work(conn, kills=1))
        assert survivor == pids[-1] != pids[0]
        assert "lost its connection" in caplog.text
        pids.clear()
        with pytest.raises(sa.exc.OperationalError):  # lost again: once is the limit
            policy.run(lambda conn: work(conn, kills=2))
        assert len(pids) == 2
    finally:
        engine.dispose()


def test_a_real_postgresql_deadlock_is_retried(postgres_url: str) -> None:
    """Two writers lock two rows in opposite orders: PostgreSQL kills one (40P01), which the
    policy runs again; both batches end up written."""
    engine = sa.create_engine(postgres_url, pool_size=4)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE dl (id int PRIMARY KEY, n int NOT NULL)")
        conn.exec_driver_sql("INSERT INTO dl VALUES (1, 0), (2, 0)")
        conn.exec_driver_sql("ALTER DATABASE " + engine.url.database + " SET deadlock_timeout = '100ms'")  # type: ignore[operator]
    engine.dispose()
    policy = TransactionPolicy(engine, delay=lambda attempt: 0.0)
    both_hold_one = threading.Barrier(2, timeout=10)
    attempts = {"a": 0, "b": 0}
    errors: list[BaseException] = []

    def writer(name: str, first: int, second: int) -> None:
        def work(conn: Connection) -> None:
            attempts[name] += 1
            conn.exec_driver_sql(f"UPDATE dl SET n = n + 1 WHERE id = {first}")
            if attempts[name] == 1:
                both_hold_one.wait()
            conn.exec_driver_sql(f"UPDATE dl SET n = n + 1 WHERE id = {second}")

        try:
            policy.run(work)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=("a", 1, 2)),
        threading.Thread(target=writer, args=("b", 2, 1)),
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors, errors
        # A victim runs again (the retry may meet its rival again and lose once more).
        assert max(attempts.values()) >= 2
        assert time.monotonic() - start < 20
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT n FROM dl ORDER BY id").scalars().all() == [2, 2]
    finally:
        engine.dispose()


def test_isolate_bisects_to_the_refused_items() -> None:
    """Everything but what the database refuses is written; each refused item comes with why."""
    written: list[list[int]] = []

    def write(part: list[int]) -> int:
        if any(i in (3, 6) for i in part):
            raise sa.exc.DataError("INSERT", {}, ValueError(f"value out of range in {part}\nDETAIL"))
        written.append(part)
        return len(part)

    total, refused = TransactionPolicy.isolate(list(range(8)), write, int.__add__, 0)
    assert total == 6
    assert sorted(i for part in written for i in part) == [0, 1, 2, 4, 5, 7]
    assert refused == [(3, "value out of range in [3]"), (6, "value out of range in [6]")]
