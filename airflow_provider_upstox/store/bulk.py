"""Driver-level batch writers for PostgreSQL (psycopg 3) and SQLite: the hot path of ``apply()``.

The SQLAlchemy path (:mod:`.upsert`) sends a multi-row ``VALUES`` statement whose text grows with the
batch: the driver re-parses that text on every batch and SQLAlchemy processes every bind value in
Python. Here every statement's text is fixed, and values travel in the driver's cheapest form.

PostgreSQL: each table's rows go by binary ``COPY`` into a temporary *stage* table of the session
(typed values, the ``raw`` JSON sent once as the text validation already encoded), then ONE
statement writes them from the stage::

    COPY upstox_orders_stage_v3 (account, order_id, ..., raw, state_id, ord) FROM STDIN (FORMAT BINARY)
    WITH ev AS (INSERT INTO upstox_order_events (...) SELECT DISTINCT ON (account, order_id, state_id) ...
                FROM upstox_orders_stage_v3 ORDER BY ..., ord ON CONFLICT (...) DO NOTHING RETURNING 1),
         up AS (INSERT INTO upstox_orders AS t (...) SELECT DISTINCT ON (account, order_id) ...
                FROM upstox_orders_stage_v3 ORDER BY account, order_id, version DESC, ord
                ON CONFLICT (account, order_id) DO UPDATE SET ..., revision = t.revision + 1
                WHERE excluded.version > t.version RETURNING t.revision)
    SELECT <inserted>, <written>, <new events>

:class:`PgOrderStage` is filled while ``apply()`` is still validating the batch, so the server
parses the staged rows (its largest cost: ``raw`` into ``jsonb``) while Python works. It replaced
one ``jsonb_array_elements`` payload per batch, which the server parsed whole into ``jsonb`` and
then split into columns: 18 ms per 500 new orders here, against 14 ms for the COPY and the upsert.

SQLite (in-process): the single-row form of the same upsert, ONE ``executemany`` per table and
batch (sqlite3 binds in C). ``executemany`` returns no rows, so inserts and updates are told apart by
counting, in the same transaction and before the write, how many of the batch's keys are stored.

The ordering rule is the same ``excluded.version > t.version`` condition as in :mod:`.upsert`,
evaluated by the database on the row it has locked, so it still holds under concurrent writers.
Values are converted exactly as SQLAlchemy's column types would convert them (JSON text,
timestamps, money), so both paths store identical rows (``tests/store/test_bulk.py`` checks that).
"""

from __future__ import annotations

import datetime as dt
import logging
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

log = logging.getLogger(__name__)


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
#: SQLAlchemy column type -> PostgreSQL type, first match wins (narrower integers before Integer).
_PG_COPY_TYPES: Final[tuple[tuple[type[sa.types.TypeEngine[Any]], str], ...]] = (
    (sa.JSON, "jsonb"),
    (sa.LargeBinary, "bytea"),
    (sa.Boolean, "bool"),
    (sa.SmallInteger, "int2"),
    (sa.BigInteger, "int8"),
    (sa.Integer, "int4"),
    (sa.Numeric, "numeric"),
)


def _pg_copy_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type *column*'s values travel as in binary COPY, and its stage column's type.

    Exact widths (binary COPY applies no cast); strings as ``text``, whose wire format ``varchar``
    shares: the table itself refuses a value longer than its column when the stage is written.
    """
    for sa_type, pg_type in _PG_COPY_TYPES:
        if isinstance(column.type, sa_type):
            return pg_type
    if _is_datetime(column):
        return "timestamptz"
    if isinstance(column.type, sa.String):
        return "text"
    raise TypeError(f"no binary COPY type for column {column.name} ({column.type!r})")


#: Binary ``numeric`` encodings by value (see ``_pg_copy_dumpers``); bounded, cleared when full.
_NUMERIC_CACHE: dict[Any, bytes] = {}


class _JsonText(str):
    """JSON text already encoded (``PreparedRow.raw_json``), sent to a ``jsonb`` column as is."""

    __slots__ = ()


@lru_cache(maxsize=1)
def _pg_copy_dumpers() -> tuple[type[Any], ...]:
    """psycopg dumpers for the COPY cursors, registered by OID (how ``Copy.set_types`` picks them)
    on each COPY cursor only, so the connection's own adaptation is untouched:

    - ``jsonb`` from :class:`_JsonText` as is (binary format version 1, then the text), anything
      else encoded here: ``raw`` is sent as the JSON text validation already encoded;
    - ``bytea`` by psycopg's C dumper (the default by OID is a Python-level DB-API wrapper);
    - ``numeric`` from a cache of encoded values: psycopg's dumper takes ~0.9 us per ``Decimal``
      (it builds ``Decimal.as_tuple()``), a tenth of an order row's COPY time, and prices repeat.

    Built on first use: psycopg is optional.
    """
    from psycopg.adapt import Dumper
    from psycopg.postgres import types
    from psycopg.pq import Format
    from psycopg.types.numeric import NumericBinaryDumper
    from psycopg.types.string import BytesBinaryDumper

    class JsonbTextDumper(Dumper):
        format = Format.BINARY
        oid = types["jsonb"].oid

        def dump(self, obj: Any) -> bytes:
            text = obj if isinstance(obj, _JsonText) else _json(obj)
            return b"\x01" + text.encode()

    class CachedNumericDumper(Dumper):
        format = Format.BINARY
        oid = types["numeric"].oid

        def __init__(self, cls: type, context: Any = None) -> None:
            super().__init__(cls, context)
            self._dumper = NumericBinaryDumper(cls, context)

        def dump(self, obj: Any) -> bytes:
            # Keyed by value: equal Decimals of another scale ("1.5", "1.500000") or sign of zero
            # may share an encoding, which the Numeric(20, 6) column stores as the same number
            # (and money values all come quantized to 6 places, see rows.money).
            encoded = _NUMERIC_CACHE.get(obj)
            if encoded is None:
                encoded = bytes(self._dumper.dump(obj))  # type: ignore[arg-type]
                if len(_NUMERIC_CACHE) >= 8192:
                    _NUMERIC_CACHE.clear()
                _NUMERIC_CACHE[obj] = encoded
            return encoded

    return JsonbTextDumper, BytesBinaryDumper, CachedNumericDumper


#: Extra columns of the orders stage: the event key, and the update's position in the batch.
_ORDER_STAGE_EXTRA: Final = (("state_id", "text"), ("ord", "int4"))


def _pg_stage_name(table: sa.Table) -> str:
    # Named after the schema version: a session that outlives a migration never reuses an old shape.
    return f"{table.name}_stage_v{schema.SCHEMA_VERSION}"


@lru_cache(maxsize=16)
def _pg_stage_ddl(table: sa.Table) -> str:
    """``CREATE TEMP TABLE IF NOT EXISTS`` of *table*'s stage: its columns, as sent by COPY.

    A temporary table lives in the session's own memory (no WAL, no locks shared with other
    writers); ``ON COMMIT DELETE ROWS`` empties it with each transaction, so a pooled connection
    reuses it batch after batch. Created in the batch's transaction (a no-op once it exists), it
    also works behind a transaction-pooling proxy. Built from :mod:`.schema`, not ``LIKE`` the
    table, and without constraints: a column a user added to the table cannot break it, and what
    the table refuses (a value too long, a NULL) is refused when the batch is written into it.
    """
    columns = [f"{_PG_DIALECT.identifier_preparer.quote(c.name)} {_pg_copy_type(c)}" for c in table.c]
    if table is schema.orders:
        columns += [f"{name} {type_}" for name, type_ in _ORDER_STAGE_EXTRA]
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {_pg_stage_name(table)} ({', '.join(columns)}) "
        "ON COMMIT DELETE ROWS"
    )


def _raw_last(columns: tuple[str, ...]) -> tuple[str, ...]:
    """*columns* with ``raw`` moved last: rows are staged as (other values..., raw JSON text)."""
    return (*(c for c in columns if c != "raw"), "raw") if "raw" in columns else columns


def _pg_prepare_copy(
    cur: Any, table: sa.Table, columns: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()
) -> tuple[str, list[str]]:
    """Create *table*'s stage if needed; the binary ``COPY`` of *columns* (then *extra*) into it.

    :returns: the COPY statement and the types for ``Copy.set_types``.
    """
    q = _PG_DIALECT.identifier_preparer.quote
    names = ", ".join((*(q(c) for c in columns), *(n for n, _ in extra)))
    cur.execute(_pg_stage_ddl(table))
    for dumper in _pg_copy_dumpers():
        cur.adapters.register_dumper(None, dumper)
    types = [_pg_copy_type(table.c[c]) for c in columns] + [t for _, t in extra]
    return f"COPY {_pg_stage_name(table)} ({names}) FROM STDIN (FORMAT BINARY)", types


def _pg_staged_values(
    rows: list[dict[str, Any]], columns: tuple[str, ...], raws: Sequence[str | None] | None
) -> list[tuple[Any, ...]]:
    """*rows* as tuples of :func:`_raw_last` *columns*; ``raw`` as the JSON text validation encoded."""
    if "raw" not in columns:
        get = _getter(columns)
        return [get(row) for row in rows]
    get = _getter(columns[:-1])
    texts = raws if raws is not None else [None] * len(rows)
    return [
        (*get(row), row["raw"] if text is None else _JsonText(text))
        for row, text in zip(rows, texts, strict=True)
    ]


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
    cols = ", ".join(q(c) for c in columns)
    return (
        f"INSERT INTO {q(table.name)} AS t ({cols}) SELECT {cols} FROM {_pg_stage_name(table)} "
        + _pg_upsert_tail(columns, key_cols)
    )


def pg_upsert_states(
    dbapi_conn: Any,
    table: sa.Table,
    key_cols: Sequence[str],
    rows: list[dict[str, Any]],
    raws: Sequence[str | None] | None = None,
) -> WriteCounts:
    """Upsert *rows* (unique per key, sorted) from a binary-COPY stage; stale states are left alone.

    :param dbapi_conn: a psycopg 3 connection, in the caller's transaction.
    :param raws: the ``raw`` column of each row as JSON text, when already encoded.
    """
    if not rows:
        return WriteCounts(0, 0, 0)
    columns = _raw_last(tuple(rows[0]))
    with dbapi_conn.cursor() as cur:
        sql, types = _pg_prepare_copy(cur, table, columns)
        with cur.copy(sql) as copy:
            copy.set_types(types)
            for values in _pg_staged_values(rows, columns, raws):
                copy.write_row(values)
        cur.execute(_pg_upsert_sql(table, columns, tuple(key_cols)))
        revisions = [r[0] for r in cur.fetchall()]
    return counts_from_revisions(revisions, len(rows))


@lru_cache(maxsize=16)
def _pg_orders_sql(columns: tuple[str, ...]) -> str:
    """Orders and their events in ONE statement over the orders stage.

    The stage holds every accepted order update of the batch, duplicates included: ``DISTINCT ON``
    picks the winning state per order (highest version, then first in the batch) and the first
    update of each distinct state (its event), the same choice as ``store._collect`` makes for the
    other tables, and both are written in key order, so concurrent writers lock rows in one order.
    """
    q = _PG_DIALECT.identifier_preparer.quote
    orders, events = schema.orders, schema.order_events
    stage = _pg_stage_name(orders)
    event_cols = ", ".join(q(c.name) for c in events.c)
    cols = ", ".join(q(c) for c in columns)
    return (
        f"WITH ev AS (INSERT INTO {q(events.name)} ({event_cols}) "
        f"SELECT DISTINCT ON (account, order_id, state_id) {event_cols} FROM {stage} "
        "ORDER BY account, order_id, state_id, ord "
        f"ON CONFLICT ({', '.join(_ORDER_EVENT_KEY)}) DO NOTHING RETURNING 1), "
        f"up AS (INSERT INTO {q(orders.name)} AS t ({cols}) "
        f"SELECT DISTINCT ON (account, order_id) {cols} FROM {stage} "
        "ORDER BY account, order_id, version DESC, ord "
        f"{_pg_upsert_tail(columns, schema.KEY_COLUMNS['order'])}) "
        "SELECT (SELECT count(*) FROM up WHERE revision = 1), (SELECT count(*) FROM up), "
        "(SELECT count(*) FROM ev)"
    )


class PgOrderStage:
    """The order updates of one batch, sent by binary COPY to a temporary stage as they come.

    ``apply()`` adds each order while it is still validating the rest of the batch, so the server
    parses the staged rows (mostly the ``raw`` JSON into ``jsonb``) while Python works; then
    :meth:`write` upserts the winners and inserts the new events with one statement. Everything runs
    in the caller's transaction on *dbapi_conn* (psycopg 3).
    """

    def __init__(self, dbapi_conn: Any) -> None:
        self._conn = dbapi_conn
        self._cur: Any = None
        self._copying: Any = None  # the entered ``cursor.copy()`` context
        self._copy: Any = None
        self._columns: tuple[str, ...] = ()
        self._values: Callable[[dict[str, Any]], tuple[Any, ...]] = _getter(("raw",))
        self.count = 0

    def add(self, row: dict[str, Any], raw_json: str | None, state_id: str) -> None:
        """Stage one accepted order update (its prepared row, ``raw`` as JSON text, its state id)."""
        if self._copy is None:
            self._columns = _raw_last(tuple(row))
            self._values = _getter(self._columns[:-1])
            self._cur = self._conn.cursor()
            sql, types = _pg_prepare_copy(self._cur, schema.orders, self._columns, _ORDER_STAGE_EXTRA)
            self._copying = self._cur.copy(sql)
            copy = self._copying.__enter__()
            self._copy = copy
            copy.set_types(types)
        raw = row["raw"] if raw_json is None else _JsonText(raw_json)
        self._copy.write_row((*self._values(row), raw, state_id, self.count))
        self.count += 1

    def write(self) -> tuple[WriteCounts, int]:
        """End the COPY and write orders and events; returns the order counts and the new events."""
        if self._copy is None:
            return WriteCounts(0, 0, 0), 0
        copying, self._copying, self._copy = self._copying, None, None
        try:
            copying.__exit__(None, None, None)  # raises what the server refused in the staged rows
            self._cur.execute(_pg_orders_sql(self._columns))
            inserted, written, new_events = self._cur.fetchone()
        finally:
            self._cur.close()
        return WriteCounts(inserted, written - inserted, self.count - written), new_events

    def abort(self) -> None:
        """Give up the COPY (the caller rolls the transaction back); never raises."""
        copying, self._copying, self._copy = self._copying, None, None
        try:
            if copying is not None:
                error = RuntimeError("batch abandoned")
                copying.__exit__(RuntimeError, error, None)
        except Exception:
            log.debug("Ending an abandoned COPY failed (the transaction is rolled back)", exc_info=True)
        finally:
            if self._cur is not None:
                self._cur.close()


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
    """Upsert *rows* (unique per key) with one ``executemany`` (sqlite3 binds and steps in C)."""
    if not rows:
        return WriteCounts(0, 0, 0)
    _, pack = _sqlite_plan(table, tuple(rows[0]), tuple(key_cols), True)
    return _sqlite_upsert_packed(dbapi_conn, table, tuple(key_cols), rows, _sqlite_params(rows, pack, raws))


def _sqlite_upsert_packed(
    dbapi_conn: Any, table: sa.Table, key_cols: tuple[str, ...], rows: list[dict[str, Any]], params: Any
) -> WriteCounts:
    """The upsert of *rows*, already packed as driver values (*params*, in the same order).

    ``executemany`` cannot return rows, so: stored keys counted first (inserted = rows - stored),
    rows changed counted by the driver (inserted + updated). Both in the caller's transaction,
    which must hold the write lock (``BEGIN IMMEDIATE``) so that no other writer comes between.
    """
    sql, _ = _sqlite_plan(table, tuple(rows[0]), key_cols, True)
    key_of = _getter(key_cols)
    cur = dbapi_conn.cursor()
    try:
        cur.execute(_sqlite_stored_sql(table, key_cols), (_json([key_of(r) for r in rows]),))
        stored = int(cur.fetchone()[0])
        cur.executemany(sql, params)
        written = int(max(cur.rowcount, 0))
    finally:
        cur.close()
    inserted = len(rows) - stored
    return WriteCounts(inserted, written - inserted, len(rows) - written)


@lru_cache(maxsize=16)
def _sqlite_event_plan(
    order_columns: tuple[str, ...],
) -> tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]]:
    """The events insert, and a getter taking an event's values from its order's packed row.

    Every event column but ``state_id`` holds the order row's value of the same name
    (:data:`.rows.EVENT_ROW_COLUMNS`), already converted for the driver when the order was packed.
    """
    events = schema.order_events
    names = tuple(c.name for c in events.c if c.name != "state_id")
    q = '"{}"'.format
    columns = (*names, "state_id")
    sql = (
        f"INSERT INTO {q(events.name)} ({', '.join(q(c) for c in columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT ({', '.join(_ORDER_EVENT_KEY)}) DO NOTHING"
    )
    get = operator.itemgetter(*(order_columns.index(c) for c in names))
    return sql, get


def sqlite_write_orders(
    dbapi_conn: Any,
    winners: list[tuple[dict[str, Any], str | None]],
    events: list[tuple[dict[str, Any], str | None, str]],
) -> tuple[WriteCounts, int]:
    """Upsert the winning order states and insert the new events (two ``executemany``).

    :param winners: ``(order row, raw JSON text)`` per order, unique per key, sorted.
    :param events: ``(order row, raw JSON text, state_id)`` of the first update of each state.
    :returns: the order write counts and how many events were new.

    An event's values are taken from its order's packed row (each value converted once); an
    event whose update lost to a newer one of the batch is packed on its own.
    """
    if not winners:
        return WriteCounts(0, 0, 0), 0
    columns = tuple(winners[0][0])
    keys = schema.KEY_COLUMNS["order"]
    _, pack = _sqlite_plan(schema.orders, columns, keys, True)
    packed = {id(row): pack(row, raw) for row, raw in winners}
    counts = _sqlite_upsert_packed(dbapi_conn, schema.orders, keys, [r for r, _ in winners], packed.values())
    event_sql, event_values = _sqlite_event_plan(columns)
    params = []
    for row, raw, state_id in events:
        values = packed.get(id(row))
        params.append((*event_values(values if values is not None else pack(row, raw)), state_id))
    cur = dbapi_conn.cursor()
    try:
        cur.executemany(event_sql, params)
        return counts, int(max(cur.rowcount, 0))
    finally:
        cur.close()


# ------------------------------------------------------------------------------------ stream progress
_PROGRESS_COLUMNS: Final = (
    "account",
    "stream_key",
    "last_seq",
    "last_received_at",
    "batches",
    "updates",
    "updated_at",
)


@lru_cache(maxsize=2)
def _progress_sql(dialect: str) -> str:
    """The progress upsert of :func:`.upsert.upsert_progress` as one fixed driver-level statement."""
    t = schema.stream_progress.name
    mark = "%s" if dialect == "postgresql" else "?"

    def greatest(column: str) -> str:  # NULL-ignoring, as upsert.greatest
        a, b = f"{t}.{column}", f"excluded.{column}"
        fn = "GREATEST" if dialect == "postgresql" else "max"
        return f"{fn}(coalesce({a}, {b}), coalesce({b}, {a}))"

    marks = ", ".join([mark] * len(_PROGRESS_COLUMNS))
    return (
        f"INSERT INTO {t} ({', '.join(_PROGRESS_COLUMNS)}) VALUES ({marks}) "
        f"ON CONFLICT (account, stream_key) DO UPDATE SET last_seq = {greatest('last_seq')}, "
        f"last_received_at = {greatest('last_received_at')}, batches = {t}.batches + excluded.batches, "
        f"updates = {t}.updates + excluded.updates, updated_at = excluded.updated_at"
    )


def upsert_progress(dbapi_conn: Any, dialect: str, rows: list[dict[str, Any]]) -> None:
    """Advance per-(account, stream_key) progress rows (PostgreSQL or SQLite driver connection).

    The same statement as :func:`.upsert.upsert_progress`, sent without SQLAlchemy's per-statement
    work (a tenth of a PostgreSQL batch's client time otherwise).
    """
    if dialect == "sqlite":
        params = [
            tuple(_sqlite_datetime(r[c]) if c.endswith("_at") else r[c] for c in _PROGRESS_COLUMNS)
            for r in rows
        ]
    else:
        params = [tuple(r[c] for c in _PROGRESS_COLUMNS) for r in rows]
    cur = dbapi_conn.cursor()
    try:
        cur.executemany(_progress_sql(dialect), params)
    finally:
        cur.close()
