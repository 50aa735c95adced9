"""How a batch reaches SQLite: multi-row ``INSERT`` statements per table, through the ``sqlite3`` driver.

The statements are those of :mod:`..upsert`, compiled once to driver text (``?`` parameters) and
repeated for 20 rows per statement (:func:`_execute_rows`; the rest of a batch goes through
``executemany``), so the driver parses each once per connection (its statement cache), binds every
value in C and SQLite steps through 20 rows per call (~11% fewer instructions than one
``executemany`` step per row, README "Why SQLite stays under 0.75x"). The
values are converted here exactly as SQLAlchemy's column types would bind them (JSON as text, the
``raw`` JSON as the text validation already encoded, timestamps as naive UTC text with six fraction
digits, money as ``float``), one column at a time over the whole batch, so both ways store identical
rows (``tests/store/test_bulk.py``).

The statements return no rows, so inserts and updates are told apart by the tables' rowids
(:func:`_upsert`): every state table is a rowid table (no ``WITHOUT ROWID``, no ``INTEGER PRIMARY
KEY``: ``tests/store/test_fast_path.py`` checks it), and the batch's transaction holds the write lock
(``BEGIN IMMEDIATE``) and deletes nothing, so SQLite gives each inserted row the largest rowid + 1
and inserted = max(rowid) after - max(rowid) before; an upsert that updates keeps the row's rowid,
and the driver's ``rowcount`` counts the rows written (an upsert whose ``WHERE`` refuses the new
state changes nothing and counts 0), so updated = written - inserted. Near the largest rowid SQLite
picks random rowids instead: then the keys already stored are counted before the write.

The engine is configured here too (:func:`configure`): WAL, so readers work while a batch is
written, and a busy timeout, so writers queue instead of failing.
"""

from __future__ import annotations

import datetime as dt
import itertools
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
        winners, duplicates = batch.winners(ORDER)
        new_states = batch.order_events()
        # One update per order (the common batch): the winners are the events, already by key.
        same = len(new_states) == len(winners) and all(map(operator.is_, new_states, winners))
        source = winners if same else updates
        columns = plan.columns(source)
        rows = list(zip(*columns, strict=True))
        events = _event_plan(plan.params)
        sources = (*columns, [p.state_id for p in source])
        event_rows = list(zip(*map(sources.__getitem__, events.sources), strict=True))
        if source is not winners:  # each table's rows picked from those of every update
            position = dict(zip(map(id, source), range(len(source)), strict=True))
            rows = [rows[position[id(p)]] for p in winners]
            event_rows = [event_rows[position[id(p)]] for p in new_states]
        driver = _driver(conn)
        counts = _upsert(driver, plan, rows)
        cur = driver.cursor()
        try:
            new_events = _execute_rows(cur, events.sql, event_rows)
        finally:
            cur.close()
        return counts.plus_ignored(duplicates), new_events

    def write_states(self, conn: Connection, update_type: str, winners: list[PreparedRow]) -> WriteCounts:
        if not winners:
            return WriteCounts(0, 0, 0)
        table, key_cols = schema.STATE_TABLES[update_type], schema.KEY_COLUMNS[update_type]
        plan = _plan(table, tuple(winners[0].row), key_cols)
        return _upsert(_driver(conn), plan, list(zip(*plan.columns(winners), strict=True)))

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
    zone = value.tzinfo
    if zone is not _UTC:  # what validation builds; anything else is checked and converted
        if zone is None:
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
    key: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # a row's key from its parameters

    def columns(self, prepared: Sequence[PreparedRow]) -> list[Sequence[Any]]:
        """The driver values of *prepared*'s rows, column by column in parameter order, each column
        converted at once (C-level loops); ``zip(*columns)`` gives the rows' parameters.

        ``raw`` is the JSON text validation encoded (``PreparedRow.raw_json``) when there is one.
        """
        get = self.get
        columns: list[Sequence[Any]] = list(zip(*map(get, [p.row for p in prepared]), strict=True))
        cache: dict[Any, Any] = {}
        for i, convert in self.converters:
            columns[i] = convert(columns[i], cache)
        raws = [p.raw_json for p in prepared]
        if None in raws:
            raws = [
                t if t is not None else _json_text(p.row["raw"]) for p, t in zip(prepared, raws, strict=True)
            ]
        columns[self.raw] = raws
        return columns


@lru_cache(maxsize=64)
def _plan(table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...]) -> _Plan:
    sql = upsert.driver_sql(upsert.state_upsert("sqlite", table, columns, key_cols), "sqlite", columns)
    converters = tuple(
        (i, convert)
        for i, name in enumerate(sql.params)
        if name != "raw" and (convert := _converter(table.c[name])) is not None
    )
    get = operator.itemgetter(*sql.params)
    positions = tuple(sql.params.index(c) for c in key_cols)
    key = lambda row: tuple(row[i] for i in positions)  # noqa: E731 (only near the largest rowid)
    return _Plan(sql.text, sql.params, key_cols, table, get, converters, sql.params.index("raw"), key)


@dataclass(frozen=True)
class _EventPlan:
    sql: str
    #: The source of each parameter: a column of the order rows (:meth:`_Plan.columns`), or the
    #: one after the last: the updates' ``state_id``.
    sources: tuple[int, ...]


@lru_cache(maxsize=16)
def _event_plan(order_params: tuple[str, ...]) -> _EventPlan:
    """The events insert; every event column but ``state_id`` is its order row's value (already
    converted when the order was packed, see :data:`.rows.EVENT_ROW_COLUMNS`)."""
    names = [c.name for c in schema.order_events.c]
    sql = upsert.driver_sql(upsert.event_insert("sqlite"), "sqlite", names)
    source = (*order_params, "state_id")
    return _EventPlan(sql.text, tuple(source.index(c) for c in sql.params))


#: The largest rowid: beyond it SQLite picks random rowids for new rows (see the module docstring).
_MAX_ROWID: Final = 2**63 - 1


@lru_cache(maxsize=16)
def _stored_sql(table: sa.Table, key_cols: tuple[str, ...]) -> str:
    """How many of a JSON array of keys are stored (one primary-key lookup each, in C)."""
    on = " AND ".join(f"t.\"{c}\" = json_extract(k.value, '$[{i}]')" for i, c in enumerate(key_cols))
    return f'SELECT count(*) FROM json_each(?) AS k JOIN "{table.name}" AS t ON {on}'


def _upsert(driver: Any, plan: _Plan, params: list[tuple[Any, ...]]) -> WriteCounts:
    """Upsert *params* (rows unique per key): :func:`_execute_rows`, counted by rowids (or, near the
    largest rowid, by the keys stored before the write; see the module docstring)."""
    cur = driver.cursor()
    try:
        last_rowid = f'SELECT coalesce(max(rowid), 0) FROM "{plan.table.name}"'
        before = int(cur.execute(last_rowid).fetchone()[0])
        stored = None
        if before + len(params) >= _MAX_ROWID:
            keys = _json_text([plan.key(row) for row in params])
            stored = int(cur.execute(_stored_sql(plan.table, plan.key_cols), (keys,)).fetchone()[0])
        written = _execute_rows(cur, plan.sql, params)
        if stored is None:
            inserted = int(cur.execute(last_rowid).fetchone()[0]) - before
        else:
            inserted = len(params) - stored
    finally:
        cur.close()
    return WriteCounts(inserted, written - inserted, len(params) - written)


#: Rows per multi-row statement at most, and parameters per statement at most: SQLite's limit
#: before 3.32 (999; 32,766 since), so any build takes them.
_ROWS_PER_STATEMENT: Final = 20
_MAX_PARAMS: Final = 999


def _execute_rows(cur: Any, text: str, rows: list[tuple[Any, ...]]) -> int:
    """Execute the ``INSERT ... VALUES (?, ...)`` *text* for each of *rows*: whole groups of rows
    through one multi-row statement each (:func:`.upsert.multi_row`: SQLite steps through the group
    in C), the rest through ``executemany``.

    :returns: the rows written (SQLite's change count: inserted, or updated by an upsert's ``SET``).
    """
    if not rows:
        return 0
    width = len(rows[0])
    per = max(1, min(_ROWS_PER_STATEMENT, _MAX_PARAMS // width))
    whole = len(rows) - len(rows) % per
    written = 0
    if whole:
        sql, step = upsert.multi_row(text, per), per * width
        flat = list(itertools.chain.from_iterable(rows[:whole]))
        for start in range(0, len(flat), step):
            cur.execute(sql, flat[start : start + step])
            written += cur.rowcount
    if whole < len(rows):
        cur.executemany(text, rows[whole:])
        written += max(cur.rowcount, 0)
    return int(written)


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
