"""The generic writer: SQLAlchemy Core statements of :mod:`..upsert`, for any supported dialect.

Used for MySQL/MariaDB, for PostgreSQL through a driver other than psycopg 3 (psycopg2, pg8000),
and when the PostgreSQL role may not create the COPY writer's temporary tables. SQLAlchemy's
"insertmanyvalues" sends each table's rows as multi-row ``VALUES`` pages and converts every value
by its column type.

Counting: PostgreSQL and SQLite return the ``revision`` of every row an upsert wrote
(``RETURNING``); MySQL has no ``RETURNING`` for upserts, so the rows this batch wrote are read back
by key and ``write_id`` (one keyed ``SELECT`` per account and table, after the write, inside the
same transaction, so its row locks are held).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_upstox.models.updates import ORDER
from airflow_provider_upstox.store import schema, upsert
from airflow_provider_upstox.store.batch import Batch
from airflow_provider_upstox.store.rows import PreparedRow
from airflow_provider_upstox.store.upsert import MYSQL_DIALECTS, WriteCounts, counts_from_revisions


class SqlAlchemyWriter:
    """Batch writer through SQLAlchemy Core (see the module docstring)."""

    streams_validation = False

    def write_orders(self, conn: Connection, batch: Batch) -> tuple[WriteCounts, int]:
        winners, duplicates = batch.winners(ORDER)
        counts = self.write_states(conn, ORDER, winners)
        new_events = insert_events(conn, [p.event for p in batch.order_events()])  # type: ignore[misc]
        return counts.plus_ignored(duplicates), new_events

    def write_states(self, conn: Connection, update_type: str, winners: list[PreparedRow]) -> WriteCounts:
        table, key_cols = schema.STATE_TABLES[update_type], schema.KEY_COLUMNS[update_type]
        return upsert_rows(conn, table, key_cols, [p.row for p in winners])

    def write_progress(self, conn: Connection, progress: list[dict[str, Any]]) -> None:
        if progress:
            conn.execute(upsert.progress_upsert(conn.dialect.name), progress)


def upsert_rows(
    conn: Connection, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]]
) -> WriteCounts:
    """Upsert *rows* (unique per key, sorted, all from one batch) into a state *table*."""
    if not rows:
        return WriteCounts(0, 0, 0)
    dialect = conn.dialect.name
    stmt = upsert.state_upsert(dialect, table, list(rows[0]), key_cols)
    if dialect not in MYSQL_DIALECTS:
        revisions = [r[0] for r in conn.execute(stmt.returning(table.c.revision), rows)]
        return counts_from_revisions(revisions, len(rows))
    conn.execute(stmt, rows)
    return _read_back(conn, table, key_cols, rows)


def _read_back(
    conn: Connection, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]]
) -> WriteCounts:
    """Count this batch's writes on MySQL: rows whose ``write_id`` is the batch's, by primary key."""
    first, *rest = key_cols  # "account" first: group by it so the PK prefix is used
    write_id = rows[0]["write_id"]
    groups: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        groups[row[first]].append(tuple(row[c] for c in rest))
    revisions: list[int] = []
    for account, keys in groups.items():
        cond = (
            table.c[rest[0]].in_([k[0] for k in keys])
            if len(rest) == 1
            else sa.tuple_(*(table.c[c] for c in rest)).in_(keys)
        )
        stmt = sa.select(table.c.revision).where(
            table.c[first] == account, cond, table.c.write_id == write_id
        )
        revisions.extend(r[0] for r in conn.execute(stmt))
    return counts_from_revisions(revisions, len(rows))


def insert_events(conn: Connection, events: list[dict[str, Any]]) -> int:
    """Insert ``upstox_order_events`` rows, skipping states already recorded; returns how many were new."""
    if not events:
        return 0
    dialect = conn.dialect.name
    stmt = upsert.event_insert(dialect)
    if dialect in MYSQL_DIALECTS:
        return max(conn.execute(stmt, events).rowcount, 0)
    return len(conn.execute(stmt.returning(schema.order_events.c.account), events).all())
