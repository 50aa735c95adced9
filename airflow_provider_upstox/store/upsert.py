"""Every statement that writes a batch, built in ONE place per dialect (SQLAlchemy Core).

The writers (:mod:`.writers`) execute these statements, either through SQLAlchemy (the generic
writer) or as the fixed driver-level text they compile to once (:func:`driver_sql`: the SQLite and
PostgreSQL COPY writers), so the SQL of each dialect exists once.

PostgreSQL and SQLite::

    INSERT ... VALUES (...) | SELECT ... FROM <stage>
    ON CONFLICT (key) DO UPDATE SET ..., revision = t.revision + 1 WHERE excluded.version > t.version

MySQL/MariaDB::

    INSERT ... VALUES (...), (...) ON DUPLICATE KEY UPDATE
        col = CASE WHEN VALUES(version) > version THEN VALUES(col) ELSE col END, ...,
        version = CASE WHEN ... THEN VALUES(version) ELSE version END

MySQL evaluates the assignments left to right and each sees the columns already assigned, so
``version`` (the rule's input) is assigned *last*. MySQL has no ``RETURNING`` for upserts: the
generic writer reads the rows back by key and ``write_id``.

Because the condition is evaluated by the database against the row it has locked, the ordering
rule holds with any number of concurrent writers. Rows must be unique per key within a statement
(PostgreSQL refuses to touch a row twice) and sorted by key, so concurrent writers lock rows in the
same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from airflow_provider_upstox.store import schema

#: Columns an upsert never overwrites with the new state's value (``version`` is set by the rule).
NEVER_UPDATED: Final = frozenset({"revision", "first_seen_at", "version"})
#: The key of ``upstox_order_events`` (an order's distinct states).
EVENT_KEY: Final = tuple(c.name for c in schema.order_events.primary_key.columns)
#: The key of ``upstox_stream_progress``.
PROGRESS_KEY: Final = tuple(c.name for c in schema.stream_progress.primary_key.columns)
#: The progress columns a batch writes (``state`` belongs to the operators).
PROGRESS_COLUMNS: Final = (*PROGRESS_KEY, "last_seq", "last_received_at", "batches", "updates", "updated_at")

MYSQL_DIALECTS: Final = frozenset({"mysql", "mariadb"})
_ONE: Final[sa.ColumnClause[Any]] = sa.literal_column("1")


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """What one upsert did to its rows."""

    inserted: int
    updated: int
    ignored: int

    def plus_ignored(self, ignored: int) -> WriteCounts:
        """These counts with *ignored* more (updates that lost to another of their batch)."""
        return WriteCounts(self.inserted, self.updated, self.ignored + ignored)


def counts_from_revisions(revisions: Sequence[int], n_rows: int) -> WriteCounts:
    """Counts of an upsert of *n_rows* rows from the ``revision`` of each row it wrote.

    A written row with revision 1 was inserted, any other was updated (a newer state); the rows
    not written were stale or duplicates.
    """
    inserted = sum(1 for r in revisions if r == 1)
    return WriteCounts(inserted, len(revisions) - inserted, n_rows - len(revisions))


def _insert(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect in MYSQL_DIALECTS:
        return mysql.insert(table)
    raise NotImplementedError(f"the portfolio store does not support the {dialect!r} dialect")


def state_upsert(
    dialect: str,
    table: sa.Table,
    columns: Sequence[str],
    key_cols: Sequence[str],
    source: sa.Select[Any] | None = None,
) -> Any:
    """Upsert of *columns* into a state *table*, the ordering rule in its condition.

    :param source: rows from a ``SELECT`` (PostgreSQL's COPY stage) instead of bound values.
    """
    ins = _insert(dialect, table)
    if source is not None:
        ins = ins.from_select(list(columns), source)
    update_cols = [c for c in columns if c not in key_cols and c not in NEVER_UPDATED]
    if dialect not in MYSQL_DIALECTS:
        excluded = ins.excluded
        set_: dict[str, Any] = {c: excluded[c] for c in update_cols}
        set_["revision"] = table.c.revision + _ONE
        set_["version"] = excluded.version
        return ins.on_conflict_do_update(
            index_elements=list(key_cols), set_=set_, where=excluded.version > table.c.version
        )
    new = ins.inserted
    newer = new.version > table.c.version
    pairs: list[tuple[str, Any]] = [(c, sa.case((newer, new[c]), else_=table.c[c])) for c in update_cols]
    pairs.append(("revision", sa.case((newer, table.c.revision + _ONE), else_=table.c.revision)))
    pairs.append(("version", sa.case((newer, new.version), else_=table.c.version)))  # must stay last
    return ins.on_duplicate_key_update(pairs)


def event_insert(dialect: str, source: sa.Select[Any] | None = None) -> Any:
    """Insert of ``upstox_order_events`` rows that skips states already recorded."""
    table = schema.order_events
    ins = _insert(dialect, table)
    if source is not None:
        ins = ins.from_select([c.name for c in table.c], source)
    if dialect in MYSQL_DIALECTS:
        # INSERT IGNORE also turns data errors into warnings, but validation has already checked
        # lengths and ranges; a no-op ON DUPLICATE KEY UPDATE would make rowcount useless instead
        # (SQLAlchemy connects with CLIENT_FOUND_ROWS).
        return ins.prefix_with("IGNORE")
    return ins.on_conflict_do_nothing(index_elements=list(EVENT_KEY))


def trade_insert(dialect: str) -> Any:
    """Insert of ``upstox_trades`` rows that skips fills already recorded: a fill is written once.

    A trade is immutable at the exchange, so the first copy stored (from the trade book or from an
    order's trades, whichever came first) is kept and later copies are no-ops.
    """
    table = schema.trades
    ins = _insert(dialect, table)
    if dialect in MYSQL_DIALECTS:
        return ins.prefix_with("IGNORE")  # validated before: IGNORE only skips duplicate keys
    return ins.on_conflict_do_nothing(index_elements=[c.name for c in table.primary_key.columns])


def backfill_enqueue(dialect: str) -> Any:
    """Queue an order for the history backfill, or re-open its finished entry.

    An order already waiting keeps its place (and attempts); one whose history was read before is
    queued again, because a new snapshot differing from the store means new steps to read.
    """
    table = schema.backfill_queue
    ins = _insert(dialect, table)
    new = ins.inserted if dialect in MYSQL_DIALECTS else ins.excluded
    reopened = table.c.done_at.is_not(None)
    values = {
        "reason": sa.case((reopened, new.reason), else_=table.c.reason),
        "queued_at": sa.case((reopened, new.queued_at), else_=table.c.queued_at),
        # literal, not bound: pymysql's executemany binds parameters only inside VALUES (...)
        "attempts": sa.case((reopened, sa.literal_column("0")), else_=table.c.attempts),
        "done_at": sa.null(),  # assigned last: MySQL's CASEs above must see the old value
    }
    if dialect in MYSQL_DIALECTS:
        return ins.on_duplicate_key_update(list(values.items()))
    key = [c.name for c in table.primary_key.columns]
    return ins.on_conflict_do_update(index_elements=key, set_=values)


def _greatest(dialect: str, a: Any, b: Any) -> Any:
    """``GREATEST(a, b)`` ignoring NULLs (SQLite spells it ``max(a, b)``)."""
    fn = sa.func.max if dialect == "sqlite" else sa.func.greatest
    return fn(sa.func.coalesce(a, b), sa.func.coalesce(b, a))


def progress_upsert(dialect: str) -> Any:
    """Advance per-(account, stream_key) progress rows: max seq/received_at, add the counters."""
    t = schema.stream_progress
    ins = _insert(dialect, t)
    new = ins.inserted if dialect in MYSQL_DIALECTS else ins.excluded
    values = {
        "last_seq": _greatest(dialect, t.c.last_seq, new.last_seq),
        "last_received_at": _greatest(dialect, t.c.last_received_at, new.last_received_at),
        "batches": t.c.batches + new.batches,
        "updates": t.c.updates + new.updates,
        "updated_at": new.updated_at,
    }
    if dialect in MYSQL_DIALECTS:
        return ins.on_duplicate_key_update(values)
    return ins.on_conflict_do_update(index_elements=list(PROGRESS_KEY), set_=values)


#: Compile-only dialects with positional parameters: the drivers' own ``executemany`` form.
_DRIVER_DIALECTS: Final[dict[str, sa.Dialect]] = {
    "postgresql": postgresql.dialect(paramstyle="format"),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.dialect(paramstyle="qmark"),  # type: ignore[no-untyped-call]
}


@dataclass(frozen=True, slots=True)
class DriverSql:
    """A statement as the text a driver executes, and the column of each positional parameter."""

    text: str
    params: tuple[str, ...]


def driver_sql(stmt: Any, dialect: str, columns: Sequence[str] = ()) -> DriverSql:
    """*stmt* compiled once to driver text (PostgreSQL ``%s`` or SQLite ``?`` parameters).

    :param columns: the columns bound as parameters (an ``INSERT ... VALUES`` statement).
    """
    compiled = stmt.compile(dialect=_DRIVER_DIALECTS[dialect], column_keys=list(columns))
    return DriverSql(str(compiled), tuple(compiled.positiontup or ()))


@lru_cache(maxsize=32)
def multi_row(text: str, rows: int) -> str:
    """*text*, a driver ``INSERT ... VALUES (?, ...) ...``, taking *rows* rows of parameters at once.

    One statement of many rows does the per-row work (bind, step, reset) in the database's C code
    instead of one driver round per row (the SQLite writer: ~11% fewer instructions for its SQL).
    """
    head, values, tail = text.partition(" VALUES ")
    end = tail.index(")") + 1
    group = tail[:end]
    if not values or group.strip("(?, )"):
        raise ValueError(f"not an INSERT ... VALUES of plain parameters: {text[:80]!r}")
    return head + values + ", ".join([group] * rows) + tail[end:]


@lru_cache(maxsize=4)
def progress_sql(dialect: str) -> DriverSql:
    """:func:`progress_upsert` as driver text (PostgreSQL and SQLite writers)."""
    return driver_sql(progress_upsert(dialect), dialect, PROGRESS_COLUMNS)


@cache
def health_upsert(dialect: str) -> Any:
    """Upsert of ``upstox_stream_health`` rows: a row only moves forward in ``observed_at``.

    ``None`` in a counter or the error kind keeps the stored value (an error event carries no
    counters); ``last_message_at`` only grows; ``state_since`` changes with the state. On
    MySQL/MariaDB every assignment is guarded by the same condition and ``observed_at`` (its input)
    is assigned last, ``state_since`` before ``state``. Built once per dialect (cached): building it
    costs more than executing it.
    """
    t = schema.stream_health
    ins = _insert(dialect, t)
    new = ins.inserted if dialect in MYSQL_DIALECTS else ins.excluded
    kept = (
        "account",
        "connection_epoch",
        "reconnects",
        "messages",
        "lag_ms",
        "pending",
        "error_kind",
        "error_at",
    )
    values: list[tuple[str, Any]] = [
        ("state_since", sa.case((t.c.state == new.state, t.c.state_since), else_=new.state_since)),
        ("state", new.state),
        ("consumer", new.consumer),
        ("last_event_at", new.last_event_at),
        ("last_message_at", _greatest(dialect, t.c.last_message_at, new.last_message_at)),
        *((name, sa.func.coalesce(new[name], t.c[name])) for name in kept),
        ("token_refused_since", new.token_refused_since),
        ("observed_at", new.observed_at),  # must stay last (MySQL: the condition's input)
    ]
    newer = new.observed_at >= t.c.observed_at
    if dialect in MYSQL_DIALECTS:
        return ins.on_duplicate_key_update([(c, sa.case((newer, v), else_=t.c[c])) for c, v in values])
    return ins.on_conflict_do_update(index_elements=["conn_id"], set_=dict(values), where=newer)
