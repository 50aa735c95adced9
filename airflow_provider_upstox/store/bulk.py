"""Driver-level batch writers for PostgreSQL and SQLite: the hot path of ``apply()``.

The SQLAlchemy path (:mod:`.upsert`) sends a multi-row ``VALUES`` statement whose text grows with the
batch: psycopg re-parses that text on every batch (it caches only short queries) and SQLAlchemy
processes every bind value in Python. Here each table gets ONE short statement whose text never
changes, so the driver prepares it once per connection:

PostgreSQL: one statement per table and batch, the rows passed column-wise as arrays::

    INSERT INTO upstox_orders AS t (account, order_id, ...)
    SELECT * FROM unnest(%s::text[], %s::text[], ...)
    ON CONFLICT (account, order_id) DO UPDATE SET ... , revision = t.revision + 1, version = excluded.version
    WHERE excluded.version > t.version
    RETURNING revision

SQLite (in-process, so a statement per row costs microseconds): the single-row form of the same
upsert, executed row by row from sqlite3's statement cache, ``RETURNING revision`` read per row.

The ordering rule is the same ``excluded.version > t.version`` condition as in :mod:`.upsert`,
evaluated by the database on the row it has locked, so it still holds under concurrent writers.
Values are converted exactly as SQLAlchemy's column types would convert them (JSON text,
timestamps, money), so both paths store identical rows (``tests/store/test_bulk.py`` checks that).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from airflow_provider_upstox.store import schema
from airflow_provider_upstox.store.upsert import WriteCounts

_NEVER_UPDATED: Final = frozenset({"revision", "first_seen_at", "version"})
_PG_DIALECT: Final = postgresql.dialect()  # type: ignore[no-untyped-call]
_UTC: Final = dt.timezone.utc

Convert = Callable[[Any], Any]


def _json(value: Any) -> str:
    # JSON columns store JSON null for None (SQLAlchemy's default, none_as_null=False).
    return msgspec.json.encode(value).decode()


def _is_json(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.JSON)


def _is_datetime(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.TypeDecorator) and isinstance(column.type.impl, sa.DateTime)


# ---------------------------------------------------------------------------------------- PostgreSQL
_PG_ENCODER: Final = msgspec.json.Encoder(decimal_format="string")


def _pg_record_type(column: sa.Column[Any]) -> str:
    """Type of *column* in the ``json_to_recordset`` record (bytes travel as base64 text)."""
    if isinstance(column.type, sa.String):
        return "text"  # not varchar(n): that cast would truncate silently; the column itself refuses
    if isinstance(column.type, sa.LargeBinary):
        return "text"
    if isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Float):
        return "numeric"
    return column.type.compile(dialect=_PG_DIALECT).lower()


def _pg_select(table: sa.Table, columns: tuple[str, ...]) -> str:
    q = _PG_DIALECT.identifier_preparer.quote
    values = ", ".join(
        f"decode(x.{q(c)}, 'base64')" if isinstance(table.c[c].type, sa.LargeBinary) else f"x.{q(c)}"
        for c in columns
    )
    record = ", ".join(f"{q(c)} {_pg_record_type(table.c[c])}" for c in columns)
    return f"SELECT {values} FROM jsonb_to_recordset(%s::jsonb) AS x({record})"


@lru_cache(maxsize=64)
def _pg_upsert_sql(table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...]) -> str:
    q = _PG_DIALECT.identifier_preparer.quote
    sets = [f"{q(c)} = excluded.{q(c)}" for c in columns if c not in key_cols and c not in _NEVER_UPDATED]
    sets += ["revision = t.revision + 1", "version = excluded.version"]
    return (
        f"INSERT INTO {q(table.name)} AS t ({', '.join(q(c) for c in columns)}) {_pg_select(table, columns)} "
        f"ON CONFLICT ({', '.join(q(c) for c in key_cols)}) DO UPDATE SET {', '.join(sets)} "
        "WHERE excluded.version > t.version RETURNING t.revision"
    )


@lru_cache(maxsize=64)
def _pg_insert_ignore_sql(table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...]) -> str:
    q = _PG_DIALECT.identifier_preparer.quote
    return (
        f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in columns)}) {_pg_select(table, columns)} "
        f"ON CONFLICT ({', '.join(q(c) for c in key_cols)}) DO NOTHING"
    )


def _pg_payload(rows: list[dict[str, Any]]) -> str:
    """The batch as ONE JSON array of row objects (encoded in C by msgspec).

    Aware datetimes become RFC 3339 text, ``Decimal`` exact decimal text, bytes base64: all parsed
    back exactly by PostgreSQL, so the stored values equal what SQLAlchemy's path would store.
    """
    return _PG_ENCODER.encode(rows).decode()


def pg_upsert_states(
    dbapi_conn: Any, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]]
) -> WriteCounts:
    """Upsert *rows* (unique per key, sorted) with one statement; stale states are left alone."""
    if not rows:
        return WriteCounts(0, 0, 0)
    columns = tuple(rows[0])
    sql = _pg_upsert_sql(table, columns, tuple(key_cols))
    with dbapi_conn.cursor() as cur:
        cur.execute(sql, (_pg_payload(rows),))
        revisions = [r[0] for r in cur.fetchall()]
    inserted = sum(1 for r in revisions if r == 1)
    return WriteCounts(inserted, len(revisions) - inserted, len(rows) - len(revisions))


def pg_insert_ignore(
    dbapi_conn: Any, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]]
) -> int:
    """Insert *rows*, skipping keys already present; returns how many were new."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    with dbapi_conn.cursor() as cur:
        cur.execute(_pg_insert_ignore_sql(table, columns, tuple(key_cols)), (_pg_payload(rows),))
        return int(max(cur.rowcount, 0))


@lru_cache(maxsize=16)
def _pg_orders_sql(columns: tuple[str, ...]) -> str:
    """Orders and their events in ONE statement over ONE parsed payload (``raw`` is parsed once)."""
    q = _PG_DIALECT.identifier_preparer.quote
    orders, events = schema.orders, schema.order_events
    record = ", ".join(f"{q(c)} {_pg_record_type(orders.c[c])}" for c in columns)
    order_values = ", ".join(
        f"decode({q(c)}, 'base64')" if isinstance(orders.c[c].type, sa.LargeBinary) else q(c) for c in columns
    )
    event_cols = ", ".join(q(c.name) for c in events.c)
    keys = schema.KEY_COLUMNS["order"]
    sets = [f"{q(c)} = excluded.{q(c)}" for c in columns if c not in keys and c not in _NEVER_UPDATED]
    sets += ["revision = t.revision + 1", "version = excluded.version"]
    return (
        "WITH src AS MATERIALIZED ("
        f"SELECT * FROM jsonb_to_recordset(%s::jsonb) AS x({record}, state_id text, w boolean, e boolean)), "
        f"ev AS (INSERT INTO {q(events.name)} ({event_cols}) SELECT {event_cols} FROM src WHERE e "
        "ON CONFLICT (account, order_id, state_id) DO NOTHING RETURNING 1), "
        f"up AS (INSERT INTO {q(orders.name)} AS t ({', '.join(q(c) for c in columns)}) "
        f"SELECT {order_values} FROM src WHERE w "
        f"ON CONFLICT ({', '.join(q(c) for c in keys)}) DO UPDATE SET {', '.join(sets)} "
        "WHERE excluded.version > t.version RETURNING t.revision) "
        "SELECT (SELECT count(*) FROM up WHERE revision = 1), (SELECT count(*) FROM up), "
        "(SELECT count(*) FROM ev)"
    )


def pg_write_orders(
    dbapi_conn: Any, entries: list[tuple[dict[str, Any], str, bool, bool]], winners: int
) -> tuple[WriteCounts, int]:
    """Upsert winning order states and insert new order events with one statement.

    :param entries: ``(order row, state_id, is_winner, is_new_event_candidate)``, sorted by key.
    :param winners: how many entries are winners (for the ignored count).
    :returns: the order write counts and how many events were new.
    """
    if not entries:
        return WriteCounts(0, 0, 0), 0
    columns = tuple(entries[0][0])
    payload = _PG_ENCODER.encode(
        [row | {"state_id": state_id, "w": w, "e": e} for row, state_id, w, e in entries]
    ).decode()
    with dbapi_conn.cursor() as cur:
        cur.execute(_pg_orders_sql(columns), (payload,))
        inserted, written, new_events = cur.fetchone()
    return WriteCounts(inserted, written - inserted, winners - written), new_events


# -------------------------------------------------------------------------------------------- SQLite
@lru_cache(maxsize=8192)
def _sqlite_datetime(value: dt.datetime | None) -> str | None:
    """What SQLAlchemy's SQLite ``DATETIME`` stores for :class:`~.schema.UTCDateTime`.

    Naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` (always six fraction digits, as SQLAlchemy's
    storage format). Cached: a batch repeats the same second-resolution timestamps a lot.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store only accepts aware datetimes")
    if value.utcoffset():
        value = value.astimezone(_UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_money(value: Decimal | float | None) -> float | None:
    # SQLAlchemy's Numeric on SQLite (no native decimal) binds float(value).
    return None if value is None else float(value)


def _sqlite_converter(column: sa.Column[Any]) -> Convert | None:
    if _is_json(column):
        return _json
    if _is_datetime(column):
        return _sqlite_datetime
    if isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Integer):
        return _sqlite_money
    return None  # str, int, bool (sqlite3 stores True/False as 1/0, as SQLAlchemy does), bytes


@lru_cache(maxsize=64)
def _sqlite_plan(
    table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...], upsert: bool
) -> tuple[str, tuple[tuple[int, Convert], ...]]:
    q = '"{}"'.format
    marks = ", ".join("?" for _ in columns)
    head = f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in columns)}) VALUES ({marks}) "
    keys = ", ".join(q(c) for c in key_cols)
    if upsert:
        sets = [f"{q(c)} = excluded.{q(c)}" for c in columns if c not in key_cols and c not in _NEVER_UPDATED]
        sets += [f"revision = {q(table.name)}.revision + 1", "version = excluded.version"]
        sql = (
            f"{head}ON CONFLICT ({keys}) DO UPDATE SET {', '.join(sets)} "
            f"WHERE excluded.version > {q(table.name)}.version RETURNING revision"
        )
    else:
        sql = f"{head}ON CONFLICT ({keys}) DO NOTHING"
    converters = tuple(
        (i, conv) for i, c in enumerate(columns) if (conv := _sqlite_converter(table.c[c])) is not None
    )
    return sql, converters


def _sqlite_params(
    rows: list[dict[str, Any]], columns: tuple[str, ...], converters: tuple[tuple[int, Convert], ...]
) -> list[list[Any]]:
    out = []
    for row in rows:
        values = [row[c] for c in columns]
        for i, conv in converters:
            values[i] = conv(values[i])
        out.append(values)
    return out


def sqlite_upsert_states(
    dbapi_conn: Any, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]]
) -> WriteCounts:
    """Upsert *rows* one statement each (sqlite3 caches the prepared statement)."""
    if not rows:
        return WriteCounts(0, 0, 0)
    columns = tuple(rows[0])
    sql, converters = _sqlite_plan(table, columns, tuple(key_cols), True)
    inserted = updated = 0
    cur = dbapi_conn.cursor()
    try:
        for params in _sqlite_params(rows, columns, converters):
            found = cur.execute(sql, params).fetchone()
            if found is not None:
                if found[0] == 1:
                    inserted += 1
                else:
                    updated += 1
    finally:
        cur.close()
    return WriteCounts(inserted, updated, len(rows) - inserted - updated)


def sqlite_insert_ignore(
    dbapi_conn: Any, table: sa.Table, key_cols: Sequence[str], rows: list[dict[str, Any]]
) -> int:
    """Insert *rows* with one ``executemany``, skipping keys already present; returns how many were new."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    sql, converters = _sqlite_plan(table, columns, tuple(key_cols), False)
    cur = dbapi_conn.cursor()
    try:
        cur.executemany(sql, _sqlite_params(rows, columns, converters))
        return int(max(cur.rowcount, 0))
    finally:
        cur.close()
