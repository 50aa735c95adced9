"""Versioned, idempotent, concurrency-safe schema migrations.

Two Airflow tasks may start on an empty database at the same moment, so :func:`migrate` first takes
a database-wide lock, then reads ``schema_version`` from ``upstox_store_meta`` and runs only the
steps above it:

- PostgreSQL: ``pg_advisory_xact_lock`` inside the migration transaction (DDL is transactional).
- MySQL/MariaDB: ``GET_LOCK`` named after the database (DDL commits implicitly, so the named lock,
  not a transaction, is what serialises migrators).
- SQLite: ``BEGIN IMMEDIATE`` (the write lock on the file).

Every step is also written to be re-runnable on its own (``CREATE ... IF NOT EXISTS`` semantics via
``checkfirst``). No step ever drops a table or a column holding user data: a later version adds
tables, columns or indexes only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_provider_upstox.store import schema

log = logging.getLogger(__name__)

_LOCK_NAME: Final = "upstox_store_migrate"
_PG_LOCK_ID: Final = 0x55505354_4F580001 - 2**63  # fixed bigint ("UPSTOX" + 1), signed range
_MYSQL_LOCK_TIMEOUT_S: Final = 120
VERSION_KEY: Final = "schema_version"


class SchemaVersionError(RuntimeError):
    """The database schema is newer than this provider understands: upgrade the provider."""


def _step_1_initial(conn: Connection) -> None:
    """Create every table and index of schema version 1."""
    schema.metadata.create_all(conn, checkfirst=True)


def _step_2_position_version(conn: Connection) -> None:
    """Widen ``upstox_positions.version`` to 24 bytes (trading day and day traded quantity first).

    Only MySQL/MariaDB declare a length (``VARBINARY``); PostgreSQL ``bytea`` and SQLite ``BLOB``
    need nothing. Rows written before keep their 16-byte (received_at_us, seq) version, which
    compares below every 24-byte one (its first two bytes, 0x0003 to 0x000E for 2000 to 2100,
    read as a trading day in January 1970), so
    the next state of such a position replaces it, as "last received wins" did. Re-runnable.
    """
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql(
            f"ALTER TABLE {schema.positions.name} MODIFY version VARBINARY({schema.POSITION_VERSION_LEN}) "
            "NOT NULL COMMENT 'ordering key (bytes)'"
        )


def _step_3_case_sensitive_keys(conn: Connection) -> None:
    """MySQL/MariaDB: compare text case-sensitively (``utf8mb4_bin``), as PostgreSQL and SQLite do.

    The server's default collation (``utf8mb4_general_ci`` and kin) makes ``"gtt-1"`` and ``"GTT-1"``
    one key, so two objects whose ids differ only in case would share a row and their states would
    overwrite each other. Converting to a binary collation only splits keys, never merges them, so
    it cannot fail on existing rows. Re-runnable (converting a converted table changes nothing).
    """
    if conn.dialect.name in ("mysql", "mariadb"):
        for table in schema.metadata.sorted_tables:
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )


def _create_tables(conn: Connection, tables: tuple[sa.Table, ...]) -> None:
    """Create *tables* if missing; on MySQL/MariaDB with the case-sensitive collation of step 3."""
    for table in tables:
        table.create(conn, checkfirst=True)
    if conn.dialect.name in ("mysql", "mariadb"):
        for table in tables:
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )


def _step_4_reconciliation(conn: Connection) -> None:
    """Create ``upstox_reconciliation_runs`` and ``..._discrepancies`` if missing (:mod:`.schema`).

    Before version 4 the reconciliation operator created them itself on its first run, so a database
    may already have them, with the same names and columns: they are kept as they are, rows
    included. On MySQL/MariaDB they get the case-sensitive collation of step 3, like every table.
    Re-runnable.
    """
    _create_tables(conn, schema.RECONCILIATION_TABLES)


def _step_5_history(conn: Connection) -> None:
    """Create ``upstox_trades`` (every fill once) and ``upstox_backfill_queue`` (the backfill's to-do).

    Adds tables only. ``upstox_order_events.source`` (which channel delivered each state first)
    exists since version 1 and keeps its values: rows written before are ``stream`` or
    ``snapshot``, which is what they were; ``history`` and ``postback`` are new values, not a new
    column. Re-runnable.
    """
    _create_tables(conn, schema.HISTORY_TABLES)


def _step_6_stream_health(conn: Connection) -> None:
    """Create ``upstox_stream_health`` (one row per connection: its stream's state). Adds a table
    only; rows appear with the next persisted event of each stream. Re-runnable."""
    _create_tables(conn, schema.HEALTH_TABLES)


#: (version, description, step). Append only; never edit a released step.
MIGRATIONS: Final[list[tuple[int, str, Callable[[Connection], None]]]] = [
    (1, "initial schema", _step_1_initial),
    (2, "24-byte position version (trading day, day traded quantity)", _step_2_position_version),
    (3, "case-sensitive text keys on MySQL/MariaDB", _step_3_case_sensitive_keys),
    (4, "reconciliation runs and discrepancies owned by the store", _step_4_reconciliation),
    (5, "fills (upstox_trades) and the history backfill queue", _step_5_history),
    (6, "stream health per connection (upstox_stream_health)", _step_6_stream_health),
]
assert MIGRATIONS[-1][0] == schema.SCHEMA_VERSION


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    name = engine.dialect.name
    with engine.connect() as conn:
        if name == "postgresql":
            with conn.begin():
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
                yield conn
        elif name in ("mysql", "mariadb"):
            lock = conn.execute(
                sa.text("SELECT GET_LOCK(CONCAT(:n, DATABASE()), :t)"),
                {"n": _LOCK_NAME + ":", "t": _MYSQL_LOCK_TIMEOUT_S},
            ).scalar()
            conn.commit()
            if lock != 1:
                raise TimeoutError(f"could not take the store migration lock within {_MYSQL_LOCK_TIMEOUT_S}s")
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(CONCAT(:n, DATABASE()))"), {"n": _LOCK_NAME + ":"})
                conn.commit()
        elif name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        else:
            raise NotImplementedError(f"the portfolio store does not support the {name!r} dialect")


def current_version(conn: Connection) -> int:
    """Schema version recorded in the database (0 when the store was never created)."""
    if not sa.inspect(conn).has_table(schema.store_meta.name):
        return 0
    meta = schema.store_meta
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == VERSION_KEY)).scalar()
    return int(value) if value is not None else 0


def migrate(engine: Engine) -> int:
    """Bring the schema to :data:`~.schema.SCHEMA_VERSION`; safe to call from many processes at once.

    :returns: the schema version after the call.
    :raises SchemaVersionError: the database was migrated by a newer provider.
    """
    with _locked(engine) as conn:
        version = current_version(conn)
        if version > schema.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the store schema is version {version} but this provider knows only up to "
                f"{schema.SCHEMA_VERSION}; upgrade airflow-provider-upstox"
            )
        for target, description, step in MIGRATIONS:
            if target <= version:
                continue
            log.info("Migrating the Upstox portfolio store to schema version %d (%s)", target, description)
            step(conn)
            _set_version(conn, target)
            version = target
        return version


def _set_version(conn: Connection, version: int) -> None:
    meta = schema.store_meta
    now = datetime.now(timezone.utc)
    updated = conn.execute(
        meta.update().where(meta.c.key == VERSION_KEY).values(value=str(version), updated_at=now)
    ).rowcount
    if not updated:
        conn.execute(meta.insert().values(key=VERSION_KEY, value=str(version), updated_at=now))
