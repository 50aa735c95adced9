"""Driver-level batch writers for PostgreSQL and SQLite: the hot path of ``apply()``.

The SQLAlchemy path (:mod:`.upsert`) sends a multi-row ``VALUES`` statement whose text grows with the
batch: psycopg re-parses that text on every batch (it caches only short queries) and SQLAlchemy
processes every bind value in Python. Here each table gets ONE short statement whose text never
changes, so the driver prepares it once per connection:

PostgreSQL: one statement per table and batch, the whole batch ONE JSON parameter (an array of
row arrays, encoded in C by msgspec, ``raw`` copied as the text validation already encoded) that
the server turns into rows::

    INSERT INTO upstox_orders AS t (account, order_id, ...)
    SELECT (e ->> 0)::text AS account, (e ->> 1)::text AS order_id, ..., (e -> 37) AS raw, ...
    FROM jsonb_array_elements(%s::jsonb) AS e
    ON CONFLICT (account, order_id) DO UPDATE SET ... , revision = t.revision + 1, version = excluded.version
    WHERE excluded.version > t.version
    RETURNING t.revision

Orders and their events go in one such statement over one parsed payload (two data-modifying
CTEs). Measured against binary ``unnest`` arrays (one parameter per column): no faster on the
server, and psycopg dumps arrays element by element (~30 us of client CPU per order row, versus
~2 for the JSON).

SQLite (in-process): the single-row form of the same upsert, ONE ``executemany`` per table and
batch (sqlite3 binds in C). ``executemany`` returns no rows, so inserts and updates are told apart by
counting, in the same transaction and before the write, how many of the batch's keys are stored.

The ordering rule is the same ``excluded.version > t.version`` condition as in :mod:`.upsert`,
evaluated by the database on the row it has locked, so it still holds under concurrent writers.
Values are converted exactly as SQLAlchemy's column types would convert them (JSON text,
timestamps, money), so both paths store identical rows (``tests/store/test_bulk.py`` checks that).
JSON columns take the text validation already encoded (``PreparedRow.raw_json``) where given.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from airflow_provider_upstox.store import schema
from airflow_provider_upstox.store.upsert import WriteCounts, counts_from_revisions

_NEVER_UPDATED: Final = frozenset({"revision", "first_seen_at", "version"})
_PG_DIALECT: Final = postgresql.dialect()  # type: ignore[no-untyped-call]
_UTC: Final = dt.timezone.utc
_ORDER_EVENT_KEY: Final = ("account", "order_id", "state_id")


def _json(value: Any) -> str:
    # JSON columns store JSON null for None (SQLAlchemy's default, none_as_null=False).
    return msgspec.json.encode(value).decode()


def _is_json(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.JSON)


def _is_datetime(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.TypeDecorator) and isinstance(column.type.impl, sa.DateTime)


def _getter(columns: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    get = operator.itemgetter(*columns)
    return get if len(columns) > 1 else lambda row: (get(row),)


# ---------------------------------------------------------------------------------------- PostgreSQL
_PG_ENCODER: Final = msgspec.json.Encoder(decimal_format="string")


def _pg_type(column: sa.Column[Any]) -> str:
    """SQL type a payload value of *column* is cast to (bytes travel as base64 text)."""
    if isinstance(column.type, sa.String):
        return "text"  # not varchar(n): that cast would truncate silently; the column itself refuses
    if isinstance(column.type, sa.LargeBinary):
        return "text"
    if isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Float):
        return "numeric"
    return column.type.compile(dialect=_PG_DIALECT).lower()


def _pg_value(column: sa.Column[Any], i: int) -> str:
    """Expression reading element *i* of the payload row ``e`` (a JSON array) as *column*'s value."""
    if _is_json(column):
        return f"(e -> {i})"
    if isinstance(column.type, sa.LargeBinary):
        return f"decode(e ->> {i}, 'base64')"
    return f"(e ->> {i})::{_pg_type(column)}"


def _pg_rows(table: sa.Table, columns: tuple[str, ...], extra: tuple[str, ...] = ()) -> str:
    """``SELECT <columns> FROM jsonb_array_elements(%s::jsonb) AS e``: one payload row per array.

    *extra* are ``name type`` pairs read after the columns (flags of the orders statement).
    """
    q = _PG_DIALECT.identifier_preparer.quote
    values = [f"{_pg_value(table.c[c], i)} AS {q(c)}" for i, c in enumerate(columns)]
    for i, pair in enumerate(extra, start=len(columns)):
        name, type_ = pair.split()
        values.append(f"(e ->> {i})::{type_} AS {name}")
    return f"SELECT {', '.join(values)} FROM jsonb_array_elements(%s::jsonb) AS e"


def _pg_upsert_tail(columns: tuple[str, ...], key_cols: tuple[str, ...]) -> str:
    """``ON CONFLICT ... DO UPDATE ... WHERE <the ordering rule> RETURNING t.revision``."""
    q = _PG_DIALECT.identifier_preparer.quote
    sets = [f"{q(c)} = excluded.{q(c)}" for c in columns if c not in key_cols and c not in _NEVER_UPDATED]
    sets += ["revision = t.revision + 1", "version = excluded.version"]
    return (
        f"ON CONFLICT ({', '.join(q(c) for c in key_cols)}) DO UPDATE SET {', '.join(sets)} "
        "WHERE excluded.version > t.version RETURNING t.revision"
    )


@lru_cache(maxsize=64)
def _pg_upsert_sql(table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...]) -> str:
    q = _PG_DIALECT.identifier_preparer.quote
    return (
        f"INSERT INTO {q(table.name)} AS t ({', '.join(q(c) for c in columns)}) {_pg_rows(table, columns)} "
        + _pg_upsert_tail(columns, key_cols)
    )


@lru_cache(maxsize=64)
def _pg_insert_ignore_sql(table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...]) -> str:
    q = _PG_DIALECT.identifier_preparer.quote
    return (
        f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in columns)}) {_pg_rows(table, columns)} "
        f"ON CONFLICT ({', '.join(q(c) for c in key_cols)}) DO NOTHING"
    )


def _pg_positional(
    rows: list[dict[str, Any]], columns: tuple[str, ...], raws: Sequence[str | None] | None
) -> list[list[Any]]:
    """*rows* as lists of *columns* values; ``raw`` as the JSON text validation encoded where given
    (``msgspec.Raw``: copied into the payload, not encoded again)."""
    get = _getter(columns)
    out = [list(get(row)) for row in rows]
    if raws is not None and "raw" in columns:
        at = columns.index("raw")
        for values, text in zip(out, raws, strict=True):
            if text is not None:
                values[at] = msgspec.Raw(text)
    return out


def _pg_payload(values: list[list[Any]]) -> str:
    """The batch as ONE JSON array of row arrays (encoded in C by msgspec).

    Aware datetimes become RFC 3339 text, ``Decimal`` exact decimal text, bytes base64: all parsed
    back exactly by PostgreSQL, so the stored values equal what SQLAlchemy's path would store.
    Rows are arrays, not objects: the server parses a third less JSON and reads each value by
    position (``jsonb_array_elements`` + ``->>``), which measured twice as fast as
    ``jsonb_to_recordset`` over objects (and ``jsonb`` twice as fast as ``json``).
    """
    return _PG_ENCODER.encode(values).decode()


def pg_upsert_states(
    dbapi_conn: Any,
    table: sa.Table,
    key_cols: Sequence[str],
    rows: list[dict[str, Any]],
    raws: Sequence[str | None] | None = None,
) -> WriteCounts:
    """Upsert *rows* (unique per key, sorted) with one statement; stale states are left alone.

    :param raws: the ``raw`` column of each row as JSON text, when already encoded.
    """
    if not rows:
        return WriteCounts(0, 0, 0)
    columns = tuple(rows[0])
    sql = _pg_upsert_sql(table, columns, tuple(key_cols))
    with dbapi_conn.cursor() as cur:
        cur.execute(sql, (_pg_payload(_pg_positional(rows, columns, raws)),))
        revisions = [r[0] for r in cur.fetchall()]
    return counts_from_revisions(revisions, len(rows))


def pg_insert_ignore(
    dbapi_conn: Any,
    table: sa.Table,
    key_cols: Sequence[str],
    rows: list[dict[str, Any]],
    raws: Sequence[str | None] | None = None,
) -> int:
    """Insert *rows*, skipping keys already present; returns how many were new."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    with dbapi_conn.cursor() as cur:
        sql = _pg_insert_ignore_sql(table, columns, tuple(key_cols))
        cur.execute(sql, (_pg_payload(_pg_positional(rows, columns, raws)),))
        return int(max(cur.rowcount, 0))


@lru_cache(maxsize=16)
def _pg_orders_sql(columns: tuple[str, ...]) -> str:
    """Orders and their events in ONE statement over ONE parsed payload (``raw`` is parsed once)."""
    q = _PG_DIALECT.identifier_preparer.quote
    orders, events = schema.orders, schema.order_events
    event_cols = ", ".join(q(c.name) for c in events.c)
    src = _pg_rows(orders, columns, ("state_id text", "w boolean", "e boolean"))
    return (
        f"WITH src AS MATERIALIZED ({src}), "
        f"ev AS (INSERT INTO {q(events.name)} ({event_cols}) SELECT {event_cols} FROM src WHERE e "
        f"ON CONFLICT ({', '.join(_ORDER_EVENT_KEY)}) DO NOTHING RETURNING 1), "
        f"up AS (INSERT INTO {q(orders.name)} AS t ({', '.join(q(c) for c in columns)}) "
        f"SELECT {', '.join(q(c) for c in columns)} FROM src WHERE w "
        f"{_pg_upsert_tail(columns, schema.KEY_COLUMNS['order'])}) "
        "SELECT (SELECT count(*) FROM up WHERE revision = 1), (SELECT count(*) FROM up), "
        "(SELECT count(*) FROM ev)"
    )


def pg_write_orders(
    dbapi_conn: Any, entries: list[tuple[dict[str, Any], str | None, str, bool, bool]], winners: int
) -> tuple[WriteCounts, int]:
    """Upsert winning order states and insert new order events with one statement.

    Every event's values equal its source update's order row, so one payload entry per update
    serves both tables, flagged as winner and/or event source.

    :param entries: ``(order row, raw JSON text or None, state_id, is_winner, is_event_candidate)``,
        sorted by key.
    :param winners: how many entries are winners (for the ignored count).
    :returns: the order write counts and how many events were new.
    """
    if not entries:
        return WriteCounts(0, 0, 0), 0
    columns = tuple(entries[0][0])
    values = _pg_positional([e[0] for e in entries], columns, [e[1] for e in entries])
    for row, (_, _, state_id, w, e) in zip(values, entries, strict=True):
        row += (state_id, w, e)
    with dbapi_conn.cursor() as cur:
        cur.execute(_pg_orders_sql(columns), (_pg_payload(values),))
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


def _sqlite_expression(column: sa.Column[Any], item: str) -> str:
    """Python expression converting *item* (a row value of *column*) as SQLAlchemy's type would bind it."""
    if _is_json(column):
        return f"_json({item})"
    if _is_datetime(column):
        return f"_datetime({item})"
    if isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Integer):
        # SQLAlchemy's Numeric on SQLite (no native decimal) binds float(value).
        return f"(None if (v := {item}) is None else float(v))"
    return item  # str, int, bool (sqlite3 stores True/False as 1/0, as SQLAlchemy does), bytes


Pack = Callable[[dict[str, Any], "str | None"], tuple[Any, ...]]


def _sqlite_packer(table: sa.Table, columns: tuple[str, ...]) -> Pack:
    """``pack(row, raw_json)``: *row* as the driver values of *columns*, in one generated expression.

    One tuple display per row instead of a Python loop over converters (a third of the cost). The
    source is built from column names of :mod:`.schema` only. ``raw`` takes *raw_json* when given.
    """
    values = []
    for name in columns:
        item = f"row[{name!r}]"
        if name == "raw":
            values.append(f"({_sqlite_expression(table.c[name], item)} if raw is None else raw)")
        else:
            values.append(_sqlite_expression(table.c[name], item))
    namespace: dict[str, Any] = {"_json": _json, "_datetime": _sqlite_datetime}
    exec(f"def pack(row, raw):\n    return ({', '.join(values)},)\n", namespace)
    pack: Pack = namespace["pack"]
    return pack


@lru_cache(maxsize=64)
def _sqlite_plan(
    table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...], upsert: bool
) -> tuple[str, Pack]:
    q = '"{}"'.format
    marks = ", ".join("?" for _ in columns)
    head = f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in columns)}) VALUES ({marks}) "
    keys = ", ".join(q(c) for c in key_cols)
    if upsert:
        sets = [f"{q(c)} = excluded.{q(c)}" for c in columns if c not in key_cols and c not in _NEVER_UPDATED]
        sets += [f"revision = {q(table.name)}.revision + 1", "version = excluded.version"]
        sql = (
            f"{head}ON CONFLICT ({keys}) DO UPDATE SET {', '.join(sets)} "
            f"WHERE excluded.version > {q(table.name)}.version"
        )
    else:
        sql = f"{head}ON CONFLICT ({keys}) DO NOTHING"
    return sql, _sqlite_packer(table, columns)


def _sqlite_params(
    rows: list[dict[str, Any]], pack: Pack, raws: Sequence[str | None] | None = None
) -> list[Any]:
    """*rows* as driver values; ``raw`` from *raws* (JSON text) where given."""
    if raws is None:
        return [pack(row, None) for row in rows]
    return list(map(pack, rows, raws))


@lru_cache(maxsize=16)
def _sqlite_stored_sql(table: sa.Table, key_cols: tuple[str, ...]) -> str:
    """How many of a JSON array of keys are stored (one primary-key lookup each, in C)."""
    on = " AND ".join(f"t.\"{c}\" = json_extract(k.value, '$[{i}]')" for i, c in enumerate(key_cols))
    return f'SELECT count(*) FROM json_each(?) AS k JOIN "{table.name}" AS t ON {on}'


def sqlite_upsert_states(
    dbapi_conn: Any,
    table: sa.Table,
    key_cols: Sequence[str],
    rows: list[dict[str, Any]],
    raws: Sequence[str | None] | None = None,
) -> WriteCounts:
    """Upsert *rows* (unique per key) with one ``executemany`` (sqlite3 binds and steps in C).

    ``executemany`` cannot return rows, so: stored keys counted first (inserted = rows - stored),
    rows changed counted by the driver (inserted + updated). Both in the caller's transaction,
    which must hold the write lock (``BEGIN IMMEDIATE``) so that no other writer comes between.
    """
    if not rows:
        return WriteCounts(0, 0, 0)
    columns = tuple(rows[0])
    keys = tuple(key_cols)
    sql, pack = _sqlite_plan(table, columns, keys, True)
    key_of = _getter(keys)
    cur = dbapi_conn.cursor()
    try:
        cur.execute(_sqlite_stored_sql(table, keys), (_json([key_of(r) for r in rows]),))
        stored = int(cur.fetchone()[0])
        cur.executemany(sql, _sqlite_params(rows, pack, raws))
        written = int(max(cur.rowcount, 0))
    finally:
        cur.close()
    inserted = len(rows) - stored
    return WriteCounts(inserted, written - inserted, len(rows) - written)


def sqlite_insert_ignore(
    dbapi_conn: Any,
    table: sa.Table,
    key_cols: Sequence[str],
    rows: list[dict[str, Any]],
    raws: Sequence[str | None] | None = None,
) -> int:
    """Insert *rows* with one ``executemany``, skipping keys already present; returns how many were new."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    sql, pack = _sqlite_plan(table, columns, tuple(key_cols), False)
    cur = dbapi_conn.cursor()
    try:
        cur.executemany(sql, _sqlite_params(rows, pack, raws))
        return int(max(cur.rowcount, 0))
    finally:
        cur.close()
