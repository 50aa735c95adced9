"""How a batch reaches PostgreSQL (psycopg 3): binary ``COPY`` into a temporary stage, then one upsert.

Each table's rows go by binary ``COPY`` into a temporary *stage* table of the session (typed
values, the ``raw`` JSON sent as the text validation already encoded), then ONE statement of
:mod:`..upsert` writes them from the stage into the table, the ordering rule in its condition::

    COPY upstox_orders_stage_v3 (account, order_id, ..., raw, state_id, ord) FROM STDIN (FORMAT BINARY)
    WITH up AS (INSERT INTO upstox_orders (...) SELECT DISTINCT ON (account, order_id) ...
                FROM upstox_orders_stage_v3 ORDER BY account, order_id, version DESC, ord
                ON CONFLICT (account, order_id) DO UPDATE SET ..., revision = upstox_orders.revision + 1
                WHERE excluded.version > upstox_orders.version RETURNING upstox_orders.revision),
         ev AS (INSERT INTO upstox_order_events (...) SELECT DISTINCT ON (account, order_id, state_id)
                ... ORDER BY ..., ord ON CONFLICT (account, order_id, state_id) DO NOTHING RETURNING 1)
    SELECT <inserted>, <written>, <new events>

Orders are streamed: :meth:`PostgresCopyWriter.write_orders` consumes ``Batch.stream()``, so each
order is sent to the stage while the rest of the batch is still validated, and the server parses
staged rows (its largest cost: ``raw`` into ``jsonb``) while Python works. The stage holds every
accepted order update, duplicates included: ``DISTINCT ON`` picks the winner per order (highest
version, then first in the batch) and the first update of each distinct state (its event), the
choice ``Batch.winners`` makes for the other tables.

A stage is created in the batch's transaction (``CREATE TEMP TABLE IF NOT EXISTS``, a no-op once it
exists; ``ON COMMIT DELETE ROWS`` empties it), so it works behind a transaction-pooling proxy too.
A role without the TEMPORARY privilege cannot have one: :class:`~.base.WriterUnavailable` tells the
store to switch to the generic writer.
"""

from __future__ import annotations

import itertools
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from airflow_provider_upstox.models.updates import ORDER
from airflow_provider_upstox.store import schema, upsert
from airflow_provider_upstox.store.batch import Batch
from airflow_provider_upstox.store.rows import PreparedRow
from airflow_provider_upstox.store.upsert import WriteCounts, counts_from_revisions
from airflow_provider_upstox.store.writers.base import WriterUnavailable

log = logging.getLogger(__name__)

_DIALECT: Final = postgresql.dialect()  # type: ignore[no-untyped-call]
_quote: Final = _DIALECT.identifier_preparer.quote
#: Extra columns of the orders stage: the event key, and the update's position in the batch.
_ORDER_STAGE_EXTRA: Final = (("state_id", "text"), ("ord", "int4"))
_INSUFFICIENT_PRIVILEGE: Final = "42501"
_NUMERIC_CACHE_SIZE: Final = 8192


class PostgresCopyWriter:
    """Batch writer through psycopg 3's binary COPY (see the module docstring)."""

    streams_validation = True

    def write_orders(self, conn: Connection, batch: Batch) -> tuple[WriteCounts, int]:
        """Stream the batch's order updates to the stage while it is validated, then write them."""
        orders = (p for p in batch.stream() if p.state_id is not None)
        first = next(orders, None)
        if first is None:
            return WriteCounts(0, 0, 0), 0
        columns = _raw_last(tuple(first.row))
        get = _getter(columns[:-1])
        staged = 0
        with _driver(conn).cursor() as cur:
            sql, types = _prepare_copy(cur, schema.orders, columns, _ORDER_STAGE_EXTRA)
            try:
                with cur.copy(sql) as copy:
                    copy.set_types(types)
                    for p in itertools.chain((first,), orders):
                        copy.write_row((*get(p.row), _raw(p), p.state_id, staged))
                        staged += 1
            except conn.dialect.loaded_dbapi.Error:
                log.info(
                    "Streaming orders to the COPY stage failed; its transaction is rolled back", exc_info=True
                )
                raise
            cur.execute(_orders_sql(columns))
            inserted, written, new_events = cur.fetchone()
        return WriteCounts(inserted, written - inserted, staged - written), new_events

    def write_states(self, conn: Connection, update_type: str, winners: list[PreparedRow]) -> WriteCounts:
        if not winners:
            return WriteCounts(0, 0, 0)
        table, key_cols = schema.STATE_TABLES[update_type], schema.KEY_COLUMNS[update_type]
        columns = _raw_last(tuple(winners[0].row))
        get = _getter(columns[:-1])
        with _driver(conn).cursor() as cur:
            sql, types = _prepare_copy(cur, table, columns)
            with cur.copy(sql) as copy:
                copy.set_types(types)
                for p in winners:
                    copy.write_row((*get(p.row), _raw(p)))
            cur.execute(_states_sql(table, columns, key_cols))
            revisions = [r[0] for r in cur.fetchall()]
        return counts_from_revisions(revisions, len(winners))

    def write_progress(self, conn: Connection, progress: list[dict[str, Any]]) -> None:
        sql = upsert.progress_sql("postgresql")
        with _driver(conn).cursor() as cur:
            cur.executemany(sql.text, [tuple(r[c] for c in sql.params) for r in progress])


def _driver(conn: Connection) -> Any:
    return conn.connection.driver_connection


def _getter(columns: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row's values of *columns* as a tuple (one C-level call)."""
    get = operator.itemgetter(*columns)
    return get if len(columns) > 1 else lambda row: (get(row),)


def _raw_last(columns: tuple[str, ...]) -> tuple[str, ...]:
    """*columns* with ``raw`` moved last: rows are staged as (other values..., raw JSON text)."""
    return (*(c for c in columns if c != "raw"), "raw")


class _JsonText(str):
    """JSON text already encoded (``PreparedRow.raw_json``), sent to a ``jsonb`` column as is."""

    __slots__ = ()


def _raw(prepared: PreparedRow) -> Any:
    return prepared.row["raw"] if prepared.raw_json is None else _JsonText(prepared.raw_json)


# ------------------------------------------------------------------------------------------ the stage
#: SQLAlchemy column type -> PostgreSQL type, first match wins (narrower integers before Integer).
_COPY_TYPES: Final[tuple[tuple[type[sa.types.TypeEngine[Any]], str], ...]] = (
    (sa.JSON, "jsonb"),
    (sa.LargeBinary, "bytea"),
    (sa.Boolean, "bool"),
    (sa.SmallInteger, "int2"),
    (sa.BigInteger, "int8"),
    (sa.Integer, "int4"),
    (sa.Numeric, "numeric"),
)


def _copy_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type *column*'s values travel as in binary COPY, and its stage column's type.

    Exact widths (binary COPY applies no cast); strings as ``text``, whose wire format ``varchar``
    shares: the table itself refuses a value longer than its column when the stage is written.
    """
    for sa_type, pg_type in _COPY_TYPES:
        if isinstance(column.type, sa_type):
            return pg_type
    if isinstance(column.type, sa.TypeDecorator) and isinstance(column.type.impl, sa.DateTime):
        return "timestamptz"
    if isinstance(column.type, sa.String):
        return "text"
    raise TypeError(f"no binary COPY type for column {column.name} ({column.type!r})")


def _stage_name(table: sa.Table) -> str:
    # Named after the schema version: a session that outlives a migration never reuses an old shape.
    return f"{table.name}_stage_v{schema.SCHEMA_VERSION}"


@lru_cache(maxsize=16)
def _stage_ddl(table: sa.Table) -> str:
    """``CREATE TEMP TABLE IF NOT EXISTS`` of *table*'s stage: its columns, as sent by COPY.

    A temporary table lives in the session's own memory (no WAL, no locks shared with other
    writers). Built from :mod:`..schema`, not ``LIKE`` the table, and without constraints: a column
    a user added to the table cannot break it, and what the table refuses (a value too long, a
    NULL) is refused when the batch is written into it.
    """
    columns = [f"{_quote(c.name)} {_copy_type(c)}" for c in table.c]
    if table is schema.orders:
        columns += [f"{name} {type_}" for name, type_ in _ORDER_STAGE_EXTRA]
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {_stage_name(table)} ({', '.join(columns)}) ON COMMIT DELETE ROWS"
    )


def _prepare_copy(
    cur: Any, table: sa.Table, columns: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()
) -> tuple[str, list[str]]:
    """Create *table*'s stage if needed; the binary ``COPY`` of *columns* (then *extra*) into it.

    :returns: the COPY statement and the types for ``Copy.set_types``.
    :raises WriterUnavailable: the role may not create temporary tables.
    """
    try:
        cur.execute(_stage_ddl(table))
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE and "temporary" in str(exc).lower():
            raise WriterUnavailable(
                "the PostgreSQL role may not create temporary tables (TEMPORARY privilege)"
            ) from exc
        raise
    for dumper in _dumpers():
        cur.adapters.register_dumper(None, dumper)
    names = ", ".join((*(_quote(c) for c in columns), *(n for n, _ in extra)))
    types = [_copy_type(table.c[c]) for c in columns] + [t for _, t in extra]
    return f"COPY {_stage_name(table)} ({names}) FROM STDIN (FORMAT BINARY)", types


def _staged(table: sa.Table, columns: Iterable[str]) -> Any:
    """*table*'s stage as a lightweight SQLAlchemy table of *columns* (for the statements)."""
    return sa.table(_stage_name(table), *(sa.column(c) for c in columns))


def _compiled(stmt: Any) -> str:
    return str(stmt.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))


@lru_cache(maxsize=64)
def _states_sql(table: sa.Table, columns: tuple[str, ...], key_cols: tuple[str, ...]) -> str:
    """The upsert of *table* from its stage (rows unique per key), returning each written revision."""
    stage = _staged(table, columns)
    source = sa.select(*(stage.c[c] for c in columns))
    stmt = upsert.state_upsert("postgresql", table, columns, key_cols, source=source)
    return _compiled(stmt.returning(table.c.revision))


@lru_cache(maxsize=16)
def _orders_sql(columns: tuple[str, ...]) -> str:
    """Orders and their events in ONE statement over the orders stage (see the module docstring)."""
    orders, events = schema.orders, schema.order_events
    stage = _staged(orders, (*columns, *(n for n, _ in _ORDER_STAGE_EXTRA)))
    c = stage.c
    key = [c[k] for k in schema.KEY_COLUMNS[ORDER]]
    winners = sa.select(*(c[n] for n in columns)).distinct(*key).order_by(*key, c.version.desc(), c.ord)
    up = upsert.state_upsert("postgresql", orders, columns, schema.KEY_COLUMNS[ORDER], source=winners)
    up_cte = up.returning(orders.c.revision).cte("up")
    event_key = [c[k] for k in upsert.EVENT_KEY]
    firsts = sa.select(*(c[col.name] for col in events.c)).distinct(*event_key).order_by(*event_key, c.ord)
    ev_cte = upsert.event_insert("postgresql", source=firsts).returning(sa.literal_column("1")).cte("ev")
    count = sa.func.count()
    return _compiled(
        sa.select(
            sa.select(count).select_from(up_cte).where(up_cte.c.revision == 1).scalar_subquery(),
            sa.select(count).select_from(up_cte).scalar_subquery(),
            sa.select(count).select_from(ev_cte).scalar_subquery(),
        )
    )


# ----------------------------------------------------------------------------------------- dumpers
#: Binary ``numeric`` encodings by value (see :func:`_dumpers`); bounded, cleared when full.
_NUMERIC_CACHE: dict[Any, bytes] = {}


@lru_cache(maxsize=1)
def _dumpers() -> tuple[type[Any], ...]:
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

    encode = msgspec.json.Encoder().encode

    class JsonbTextDumper(Dumper):
        format = Format.BINARY
        oid = types["jsonb"].oid

        def dump(self, obj: Any) -> bytes:
            return b"\x01" + (obj.encode() if isinstance(obj, _JsonText) else encode(obj))

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
                if len(_NUMERIC_CACHE) >= _NUMERIC_CACHE_SIZE:
                    _NUMERIC_CACHE.clear()
                _NUMERIC_CACHE[obj] = encoded
            return encoded

    return JsonbTextDumper, BytesBinaryDumper, CachedNumericDumper
