"""Dialect-native multi-row upserts with the ordering rule inside the statement (SQLAlchemy Core).

``apply()`` uses these for MySQL/MariaDB; PostgreSQL and SQLite batches go through the equivalent
driver-level statements of :mod:`.bulk` (same condition, faster), and these stay the reference the
tests compare that path against.

PostgreSQL and SQLite::

    INSERT ... VALUES (...), (...) ON CONFLICT (key) DO UPDATE SET ... WHERE excluded.version > t.version
    RETURNING revision

MySQL/MariaDB::

    INSERT ... VALUES (...), (...) ON DUPLICATE KEY UPDATE
        col = CASE WHEN VALUES(version) > version THEN VALUES(col) ELSE col END, ...,
        version = CASE WHEN ... THEN VALUES(version) ELSE version END

MySQL evaluates the assignments left to right and each sees the columns already assigned, so
``version`` (the rule's input) is assigned *last*. MySQL has no ``RETURNING`` for upserts: the rows
this batch wrote are read back by key and ``write_id`` (one keyed SELECT per batch, after the
write, inside the same transaction, so its row locks are held).

Because the condition is evaluated by the database against the row it has locked, the rule holds
with any number of concurrent writers. SQLAlchemy's "insertmanyvalues" turns the parameter list into
multi-row ``VALUES`` pages. Rows must be unique per key within a statement (PostgreSQL refuses to
touch a row twice) and are sorted by key so concurrent writers lock rows in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

_NEVER_UPDATED = frozenset({"revision", "first_seen_at", "version"})


@dataclass(frozen=True)
class WriteCounts:
    inserted: int
    updated: int
    ignored: int


def counts_from_revisions(revisions: Sequence[int], n_rows: int) -> WriteCounts:
    """Counts of an upsert of *n_rows* rows from the ``revision`` of each row it wrote.

    A written row with revision 1 was inserted, any other was updated (a newer state); the rows
    not written were stale or duplicates. Shared by every path that reads revisions back
    (``RETURNING`` here and in :mod:`.bulk`, the keyed read-back on MySQL).
    """
    inserted = sum(1 for r in revisions if r == 1)
    return WriteCounts(inserted, len(revisions) - inserted, n_rows - len(revisions))


def _is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def _insert(conn: Connection, table: sa.Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    if name in ("mysql", "mariadb"):
        return mysql.insert(table)
    raise NotImplementedError(f"the portfolio store does not support the {name!r} dialect")


def upsert_states(
    conn: Connection, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]], write_id: int
) -> WriteCounts:
    """Upsert *rows* (unique per key, sorted) into *table*; stale states are left alone."""
    if not rows:
        return WriteCounts(0, 0, 0)
    count = len(rows)
    columns = list(rows[0])
    update_cols = [c for c in columns if c not in key_cols and c not in _NEVER_UPDATED]
    ins = _insert(conn, table)
    if not _is_mysql(conn):
        excluded = ins.excluded
        set_: dict[str, Any] = {c: excluded[c] for c in update_cols}
        set_["revision"] = table.c.revision + sa.literal_column("1")
        set_["version"] = excluded.version
        stmt = ins.on_conflict_do_update(
            index_elements=list(key_cols), set_=set_, where=excluded.version > table.c.version
        ).returning(table.c.revision)
        return counts_from_revisions([r[0] for r in conn.execute(stmt, rows)], count)

    new = ins.inserted
    newer = new.version > table.c.version
    pairs: list[tuple[str, Any]] = [(c, sa.case((newer, new[c]), else_=table.c[c])) for c in update_cols]
    pairs.append(
        ("revision", sa.case((newer, table.c.revision + sa.literal_column("1")), else_=table.c.revision))
    )
    pairs.append(("version", sa.case((newer, new.version), else_=table.c.version)))  # must stay last
    conn.execute(ins.on_duplicate_key_update(pairs), rows)
    return _read_back(conn, table, key_cols, rows, write_id)


def _read_back(
    conn: Connection, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]], write_id: int
) -> WriteCounts:
    """Count this batch's writes on MySQL: rows whose ``write_id`` is ours, found by primary key."""
    first, *rest = key_cols  # "account" first: group by it so the PK prefix is used
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


def insert_ignore(
    conn: Connection, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]]
) -> int:
    """Insert *rows*, skipping keys already present; returns how many were new."""
    if not rows:
        return 0
    ins = _insert(conn, table)
    if _is_mysql(conn):
        # INSERT IGNORE also turns data errors into warnings, but rows.prepare() has already checked
        # lengths and ranges; a no-op ON DUPLICATE KEY UPDATE would make rowcount useless instead
        # (SQLAlchemy connects with CLIENT_FOUND_ROWS).
        result = conn.execute(ins.prefix_with("IGNORE"), rows)
        return max(result.rowcount, 0)
    params: Any = rows
    stmt = ins.on_conflict_do_nothing(index_elements=list(key_cols)).returning(table.c[key_cols[0]])
    return len(conn.execute(stmt, params).all())


def greatest(conn: Connection, a: Any, b: Any) -> Any:
    """``GREATEST(a, b)`` ignoring NULLs (SQLite spells it ``max(a, b)``)."""
    if conn.dialect.name == "sqlite":
        return sa.func.max(sa.func.coalesce(a, b), sa.func.coalesce(b, a))
    return sa.func.greatest(sa.func.coalesce(a, b), sa.func.coalesce(b, a))


def upsert_progress(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Advance per-(account, stream_key) progress: max seq/received_at, add counters."""
    if not rows:
        return
    ins = _insert(conn, table)
    if _is_mysql(conn):
        new = ins.inserted
        pairs = [
            ("last_seq", greatest(conn, table.c.last_seq, new.last_seq)),
            ("last_received_at", greatest(conn, table.c.last_received_at, new.last_received_at)),
            ("batches", table.c.batches + new.batches),
            ("updates", table.c.updates + new.updates),
            ("updated_at", new.updated_at),
        ]
        conn.execute(ins.on_duplicate_key_update(pairs), rows)
        return
    ex = ins.excluded
    set_ = {
        "last_seq": greatest(conn, table.c.last_seq, ex.last_seq),
        "last_received_at": greatest(conn, table.c.last_received_at, ex.last_received_at),
        "batches": table.c.batches + ex.batches,
        "updates": table.c.updates + ex.updates,
        "updated_at": ex.updated_at,
    }
    conn.execute(ins.on_conflict_do_update(index_elements=["account", "stream_key"], set_=set_), rows)
