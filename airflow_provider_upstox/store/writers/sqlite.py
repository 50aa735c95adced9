"""How a batch reaches SQLite: ONE ``executemany`` per table and batch, through the ``sqlite3`` driver.

The statements are those of :mod:`..upsert`, compiled once to driver text (``?`` parameters), so
the driver parses each once per connection (its statement cache) and binds every value in C. The
values are converted here exactly as SQLAlchemy's column types would bind them (JSON as text, the
``raw`` JSON as the text validation already encoded, timestamps as naive UTC text with six fraction
digits, money as ``float``), one column at a time over the whole batch, so both ways store identical
rows (``tests/store/test_bulk.py``).

``executemany`` returns no rows, so inserts and updates are told apart by counting, before the
write and in the same transaction (which holds the write lock: ``BEGIN IMMEDIATE``), how many of
the batch's keys are stored already: inserted = rows - stored, updated = written - inserted.

The engine is configured here too (:func:`configure`): WAL, so readers work while a batch is
written, and a busy timeout, so writers queue instead of failing.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_provider_upstox.models.updates import ORDER
from airflow_provider_upstox.store import schema, upsert
from airflow_provider_upstox.store.batch import Batch
from airflow_provider_upstox.store.rows import PreparedRow
from airflow_provider_upstox.store.upsert import WriteCounts

log = logging.getLogger(__name__)

_UTC: Final = dt.timezone.utc
_BUSY_TIMEOUT_MS: Final = 30_000
_WAL_SWITCH_SECONDS: Final = 30.0
_json: Final = msgspec.json.Encoder().encode


class SqliteWriter:
    """Batch writer through the ``sqlite3`` driver (see the module docstring).

    :param engine: the store's engine, configured by :func:`configure` for a store's needs.
    """

    streams_validation = False

    def __init__(self, engine: Engine) -> None:
        configure(engine)

    def write_orders(self, conn: Connection, batch: Batch) -> tuple[WriteCounts, int]:
        """Upsert the winning order states, insert the new events: each value converted once."""
        updates = batch.of_type(ORDER)
        if not updates:
            return WriteCounts(0, 0, 0), 0
        plan = _plan(schema.orders, tuple(updates[0].row), schema.KEY_COLUMNS[ORDER])
        packed = dict(zip(map(id, updates), plan.pack(updates), strict=True))
        winners, duplicates = batch.winners(ORDER)
        counts = _upsert(_driver(conn), plan, winners, [packed[id(p)] for p in winners])
        events = _event_plan(plan.params)
        params = [events.values((*packed[id(p)], p.state_id)) for p in batch.order_events()]
        cur = _driver(conn).cursor()
        try:
            cur.executemany(events.sql, params)
            new_events = int(max(cur.rowcount, 0))
        finally:
            cur.close()
        return counts.plus_ignored(duplicates), new_events

    def write_states(self, conn: Connection, update_type: str, winners: list[PreparedRow]) -> WriteCounts:
        if not winners:
            return WriteCounts(0, 0, 0)
        table, key_cols = schema.STATE_TABLES[update_type], schema.KEY_COLUMNS[update_type]
        plan = _plan(table, tuple(winners[0].row), key_cols)
        return _upsert(_driver(conn), plan, winners, plan.pack(winners))

    def write_progress(self, conn: Connection, progress: list[dict[str, Any]]) -> None:
        sql = upsert.progress_sql("sqlite")
        columns = []
        for name in sql.params:
            convert = _converter(schema.stream_progress.c[name])
            values = [r[name] for r in progress]
            columns.append(values if convert is None else convert(values, {}))
        params = list(zip(*columns, strict=True))
        cur = _driver(conn).cursor()
        try:
            cur.executemany(sql.text, params)
        finally:
            cur.close()


def _driver(conn: Connection) -> Any:
    return conn.connection.driver_connection


# ------------------------------------------------------------------------------------ conversions
def _datetime(value: dt.datetime | None) -> str | None:
    """What SQLAlchemy's SQLite ``DATETIME`` stores for :class:`~..schema.UTCDateTime`: naive UTC
    text ``YYYY-MM-DD HH:MM:SS.ffffff`` (always six fraction digits, its storage format)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store only accepts aware datetimes")
    if value.utcoffset():
        value = value.astimezone(_UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def _json_text(value: Any) -> str:
    return _json(value).decode()  # JSON null for None, as SQLAlchemy's JSON (none_as_null=False)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)  # SQLAlchemy's Numeric on SQLite binds float


#: A whole column of a batch, and a cache of converted values shared by the batch's columns
#: -> the column's driver values.
ColumnConverter = Callable[[Sequence[Any], dict[Any, Any]], list[Any]]


def _by_distinct_value(convert: Callable[[Any], Any]) -> ColumnConverter:
    """*convert* applied once per distinct value of a batch (prices and times repeat, and
    ``first_seen_at`` is ``received_at`` of the same update).

    The cache is shared by the batch's columns of every such type: a ``datetime`` never equals a
    ``Decimal``, and ``None`` converts to ``None`` in both. Money: equal ``Decimal``s of another
    scale or sign of zero share a ``float``, which SQLite's ``NUMERIC`` affinity stores as the same
    value anyway (``0.0`` and ``-0.0`` both as integer 0).
    """

    def column(values: Sequence[Any], cache: dict[Any, Any]) -> list[Any]:
        for value in set(values).difference(cache):
            cache[value] = convert(value)
        return list(map(cache.__getitem__, values))

    return column


def _json_column(values: Sequence[Any], cache: dict[Any, Any]) -> list[Any]:
    """JSON values (not hashable: no cache)."""
    return list(map(_json_text, values))


_DATETIMES: Final = _by_distinct_value(_datetime)
_MONEY: Final = _by_distinct_value(_float)
_JSON: Final[ColumnConverter] = _json_column


def _converter(column: sa.Column[Any]) -> ColumnConverter | None:
    """How a column of values is bound (``None``: as it is: text, integers, booleans, bytes)."""
    if isinstance(column.type, sa.JSON):
        return _JSON
    if isinstance(column.type, sa.TypeDecorator) and isinstance(column.type.impl, sa.DateTime):
        return _DATETIMES
    if isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Integer):
        return _MONEY
    return None


@dataclass(frozen=True)
class _Plan:
    """One table's upsert for one set of row columns: its text and how rows become its parameters."""

    sql: str
    params: tuple[str, ...]  # the column of each parameter
    key_cols: tuple[str, ...]
    table: sa.Table
    get: Callable[[dict[str, Any]], tuple[Any, ...]]  # a row's values in parameter order
    converters: tuple[tuple[int, ColumnConverter], ...]  # (parameter, conversion), but raw
    raw: int  # the parameter of ``raw`` (JSON text)

    def pack(self, prepared: Sequence[PreparedRow]) -> list[tuple[Any, ...]]:
        """The driver parameters of *prepared*'s rows, converted column by column (C-level loops).

        ``raw`` is the JSON text validation encoded (``PreparedRow.raw_json``) when there is one.
        """
        get = self.get
        columns: list[Sequence[Any]] = list(zip(*[get(p.row) for p in prepared], strict=True))
        cache: dict[Any, Any] = {}
        for i, convert in self.converters:
            columns[i] = convert(columns[i], cache)
        raws = [p.raw_json for p in prepared]
        if None in raws:
            raws = [
                t if t is not None else _json_text(p.row["raw"]) for p, t in zip(prepared, raws, strict=True)
            ]
        columns[self.raw] = raws
        return list(zip(*columns, strict=True))


@lru_cache(maxsize=64)
def _plan(table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...]) -> _Plan:
    sql = upsert.driver_sql(upsert.state_upsert("sqlite", table, columns, key_cols), "sqlite", columns)
    converters = tuple(
        (i, convert)
        for i, name in enumerate(sql.params)
        if name != "raw" and (convert := _converter(table.c[name])) is not None
    )
    get = operator.itemgetter(*sql.params)
    return _Plan(sql.text, sql.params, key_cols, table, get, converters, sql.params.index("raw"))


@dataclass(frozen=True)
class _EventPlan:
    sql: str
    #: An event's parameters from ``(*its order's packed parameters, state_id)``.
    values: Callable[[tuple[Any, ...]], tuple[Any, ...]]


@lru_cache(maxsize=16)
def _event_plan(order_params: tuple[str, ...]) -> _EventPlan:
    """The events insert; every event column but ``state_id`` is its order row's value (already
    converted when the order was packed, see :data:`.rows.EVENT_ROW_COLUMNS`)."""
    names = [c.name for c in schema.order_events.c]
    sql = upsert.driver_sql(upsert.event_insert("sqlite"), "sqlite", names)
    source = (*order_params, "state_id")
    return _EventPlan(sql.text, operator.itemgetter(*(source.index(c) for c in sql.params)))


@lru_cache(maxsize=16)
def _stored_sql(table: sa.Table, key_cols: tuple[str, ...]) -> str:
    """How many of a JSON array of keys are stored (one primary-key lookup each, in C)."""
    on = " AND ".join(f"t.\"{c}\" = json_extract(k.value, '$[{i}]')" for i, c in enumerate(key_cols))
    return f'SELECT count(*) FROM json_each(?) AS k JOIN "{table.name}" AS t ON {on}'


def _upsert(
    driver: Any, plan: _Plan, winners: list[PreparedRow], params: list[tuple[Any, ...]]
) -> WriteCounts:
    """Upsert *winners* (packed as *params*): stored keys counted first, then one ``executemany``."""
    cur = driver.cursor()
    try:
        cur.execute(_stored_sql(plan.table, plan.key_cols), (_json_text([p.key for p in winners]),))
        stored = int(cur.fetchone()[0])
        cur.executemany(plan.sql, params)
        written = int(max(cur.rowcount, 0))
    finally:
        cur.close()
    inserted = len(winners) - stored
    return WriteCounts(inserted, written - inserted, len(winners) - written)


# ------------------------------------------------------------------------------- engine settings
def configure(engine: Engine) -> None:
    """Every new connection of *engine*: busy timeout, WAL, ``synchronous = NORMAL``."""
    sa.event.listen(engine, "connect", _on_connect)


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers work while a batch is written; the busy timeout makes writers queue."""
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        _wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _wal(cursor: Any) -> None:
    """Put the database in WAL mode (persistent in the file: a no-op once done).

    Switching a new database's journal mode needs a lock that SQLite does not wait for through the
    busy timeout: several processes opening a new store at once (tasks starting together) would
    see ``database is locked``. So the mode is read first, and the switch retried for a while.
    """
    deadline = time.monotonic() + _WAL_SWITCH_SECONDS
    delay = 0.005
    mode = ""
    while time.monotonic() < deadline:
        try:
            mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode in ("wal", "memory"):  # an in-memory database has no WAL
                return
            mode = str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.25)
    log.warning("SQLite store stays in journal mode %r: WAL could not be enabled", mode or "unknown")
