"""The portfolio store: ordered, idempotent persistence of :class:`Update` batches.

``apply()`` validates every update, de-duplicates the batch in Python (keeping the winning state per
key by the same version bytes the database compares), then writes everything in ONE transaction:
order states, order events, positions, holdings, GTT orders, rejected updates and the stream progress
row, always in that table order and with rows sorted by key so that concurrent writers lock rows in
the same order. A deadlock or lock timeout rolls the whole batch back and it is retried: every write
is idempotent, so a retry is harmless.

One bad update never costs its batch: validation rejects whatever a database would refuse (see
:mod:`.rows`) and records it in ``upstox_rejected_updates``; if the database still refuses a value
(``DataError``), the batch is bisected to apply everything but the update(s) it refuses, which are
recorded as rejected too. Other database errors fail the whole batch, with nothing half-written.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, NamedTuple

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import ORDER, Update
from airflow_provider_upstox.store import (
    bulk,
    migrations,
    reads,
    reconciliation_log,
    rows,
    schema,
    upsert,
    validation,
)

log = logging.getLogger(__name__)

_RETRY_ATTEMPTS = 8
_PG_RETRYABLE = frozenset({"40001", "40P01", "55P03"})  # serialization failure, deadlock, lock timeout
_MYSQL_RETRYABLE = frozenset({1205, 1213})  # lock wait timeout, deadlock
_SQLITE_RETRYABLE = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
DEFAULT_STREAM_KEY = "default"
_MAX_STREAM_KEY = 191  # upstox_stream_progress.stream_key


@dataclass(frozen=True)
class ApplyResult:
    """What one ``apply()`` did, one count per update of the batch.

    :param inserted: updates that created a row.
    :param updated: updates that replaced a stored state (they were newer).
    :param ignored: updates that were stale or duplicates (in the store or in the batch).
    :param rejected: invalid updates, recorded in ``upstox_rejected_updates``.
    :param events: new rows in ``upstox_order_events`` (informational; best effort on MySQL).
    """

    inserted: int = 0
    updated: int = 0
    ignored: int = 0
    rejected: int = 0
    events: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.ignored + self.rejected

    def __add__(self, other: ApplyResult) -> ApplyResult:
        return ApplyResult(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.ignored + other.ignored,
            self.rejected + other.rejected,
            self.events + other.events,
        )


def json_dumps(value: Any) -> str:
    """JSON for JSON columns (msgspec: fast, keeps non-ASCII as is)."""
    return msgspec.json.encode(value).decode()


class PortfolioStore:
    """Airflow-free store over any SQLAlchemy engine (PostgreSQL, MySQL/MariaDB, SQLite).

    :param engine: where to write. The schema is migrated on first use (or call :meth:`migrate`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._migrated = False
        self._lock = threading.Lock()
        #: PostgreSQL through psycopg 3: orders are streamed to a COPY stage (:class:`_OrderStream`).
        self._pg_copy = _uses_pg_copy(engine.dialect)
        if engine.dialect.name == "postgresql" and not self._pg_copy:
            log.warning(
                "Portfolio store on PostgreSQL through %s: batches are written through SQLAlchemy, "
                "several times slower than through psycopg 3's binary COPY; use a "
                "postgresql+psycopg:// URL (psycopg 3, which the Postgres provider installs)",
                engine.dialect.driver,
            )
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_on_connect)

    def __repr__(self) -> str:
        return f"PortfolioStore({self.engine.url.render_as_string(hide_password=True)!r})"

    @classmethod
    def from_url(cls, url: str | sa.URL, **engine_kwargs: Any) -> PortfolioStore:
        """A store on a new engine for *url*.

        ``sqlite:///path`` (WAL, busy timeout), ``postgresql+psycopg://...`` (psycopg 3),
        ``mysql+pymysql://...`` or ``mysql+mysqldb://...`` (MariaDB too).
        """
        engine_kwargs.setdefault("json_serializer", json_dumps)
        engine_kwargs.setdefault("pool_pre_ping", True)
        return cls(sa.create_engine(url, **engine_kwargs))

    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent, safe with concurrent callers); returns its version."""
        version = migrations.migrate(self.engine)
        self._migrated = True
        return version

    def _ensure_migrated(self) -> None:
        if not self._migrated:
            with self._lock:
                if not self._migrated:
                    self.migrate()

    def apply(
        self, updates: Iterable[Update], account: str | None = None, *, stream_key: str | None = None
    ) -> ApplyResult:
        """Write a batch of updates in one transaction; replays and stale states are harmless.

        :param updates: any mix of update types, in any order, duplicates allowed.
        :param account: Upstox user id for updates whose ``Update.account`` is unset (positions,
            holdings and GTT messages do not carry it; an order falls back to its ``user_id``).
        :param stream_key: name of the stream/consumer whose progress row (per account) records the
            highest seq and latest received time of the batch, in the same transaction.
        :raises ValueError: a position, holding or GTT update has no account: a caller error, so
            nothing is written.
        """
        batch = list(updates)
        if account is not None and (problem := validation.account_problem(account)) is not None:
            raise ValueError(f"apply(account={account!r}): {problem}")
        stream_key = stream_key or DEFAULT_STREAM_KEY
        if len(stream_key) > _MAX_STREAM_KEY or "\x00" in stream_key:
            raise ValueError(
                f"stream_key {stream_key!r} is longer than {_MAX_STREAM_KEY} characters or contains NUL"
            )
        self._ensure_migrated()
        now = datetime.now(timezone.utc)
        write_id = random.getrandbits(62) + 1
        accepted: list[tuple[Update, rows.PreparedRow]] = []
        rejects: list[dict[str, Any]] = []
        progress: dict[str, dict[str, Any]] = {}
        stream: _OrderStream | None = None
        try:
            for update in batch:
                account_id = rows.resolve_account(update, account)
                if (
                    account_id is None
                    and update.update_type in rows.STORED_TYPES
                    and update.update_type != ORDER
                ):
                    key = update.key if isinstance(update.data, dict) else None
                    raise ValueError(
                        f"{update.update_type} update {key!r} has no account: pass apply(account=...) "
                        "(the Upstox user id of the connection); Upstox does not send it in these messages"
                    )
                try:
                    if update.update_type not in rows.STORED_TYPES:
                        raise InvalidUpdateError(
                            "unknown update type: no table stores it", update_type=update.update_type
                        )
                    if account_id is None:
                        raise InvalidUpdateError(
                            "no account: no user_id and none given", update_type=ORDER, key=update.key
                        )
                    prepared = rows.prepare(update, account_id, now, write_id)
                except InvalidUpdateError as exc:
                    rejects.append(validation.reject_row(update, account_id, str(exc), now))
                    continue
                _track(progress, prepared.row["account"], update, stream_key, now)
                accepted.append((update, prepared))
                if self._pg_copy and prepared.state_id is not None:
                    if stream is None:
                        stream = _OrderStream(self)
                    stream.add(prepared)
        except BaseException:
            if stream is not None:
                stream.close()
            raise
        for reject in rejects:
            log.warning("Rejected %s", reject["error"])
        try:
            return self._write([p for _, p in accepted], rejects, progress, write_id, stream)
        except sa.exc.DataError as exc:
            log.warning(
                "The database refused a value of a batch of %d updates (%s); isolating the update(s) "
                "it refuses, the rest is applied",
                len(accepted),
                type(exc.orig).__name__,
            )
        return self._write_isolating(accepted, rejects, progress, write_id, now)

    def _write_isolating(
        self,
        accepted: list[tuple[Update, rows.PreparedRow]],
        rejects: list[dict[str, Any]],
        progress: dict[str, dict[str, Any]],
        write_id: int,
        now: datetime,
    ) -> ApplyResult:
        """The batch minus what the database refuses (``DataError``), found by bisection.

        Validation (:func:`.rows.prepare`) should reject every such value first; this is the net
        under it, so that one update the database refuses (a limit nobody foresaw) is rejected and
        recorded instead of failing, and losing, its whole batch. Each half is its own transaction;
        that is safe because every write is idempotent and ordered by the rule in SQL. The rejects
        and the progress row are written last, together.
        """
        refused: list[tuple[Update, rows.PreparedRow, str]] = []

        def attempt(items: list[tuple[Update, rows.PreparedRow]]) -> ApplyResult:
            if not items:
                return ApplyResult()
            try:
                return self._write([p for _, p in items], [], {}, write_id)
            except sa.exc.DataError as exc:
                if len(items) == 1:
                    refused.append((items[0][0], items[0][1], str(exc.orig).splitlines()[0][:500]))
                    return ApplyResult()
            mid = len(items) // 2
            return attempt(items[:mid]) + attempt(items[mid:])

        total = attempt(accepted)
        for update, prepared, reason in refused:
            error = InvalidUpdateError(
                f"the database refused a value: {reason}", update_type=update.update_type, key=update.key
            )
            log.warning("Rejected %s", error)
            rejects.append(validation.reject_row(update, prepared.row["account"], str(error), now))
        tail = self._write([], rejects, progress, write_id)
        return total + tail

    def _write(
        self,
        accepted: list[rows.PreparedRow],
        rejects: list[dict[str, Any]],
        progress: dict[str, dict[str, Any]],
        write_id: int,
        stream: _OrderStream | None = None,
    ) -> ApplyResult:
        """Write *accepted*, *rejects* and *progress* in one transaction, retried on lock conflicts.

        :param stream: the batch's orders already staged in an open transaction (PostgreSQL); its
            transaction serves the first attempt, a retry stages them again.
        """
        pg_copy = self._pg_copy
        # PostgreSQL's stage picks order winners and events itself (see _pg_orders).
        winners, events, duplicates = _collect(accepted, orders=not pg_copy)
        for attempt in range(1, _RETRY_ATTEMPTS + 1):
            stage: bulk.PgOrderStage | None = None
            if stream is not None and not stream.failed:
                tx, stage = stream.tx, stream.stage
            else:
                tx = self._begin()
            streamed, stream = stage is not None, None  # a retry starts afresh
            try:
                with tx as conn, _driver_errors(conn):
                    writers = _writers(conn, write_id, pg_copy, stage)
                    order_winners = [winners[ORDER][k] for k in sorted(winners[ORDER])]
                    counts, new_events = writers.orders(
                        order_winners, [events[k] for k in sorted(events)], accepted, duplicates[ORDER]
                    )
                    inserted, updated, ignored = counts.inserted, counts.updated, counts.ignored
                    for update_type, table in schema.STATE_TABLES.items():
                        if update_type == ORDER:
                            continue
                        batch = [winners[update_type][k] for k in sorted(winners[update_type])]
                        counts = writers.states(table, schema.KEY_COLUMNS[update_type], batch)
                        inserted += counts.inserted
                        updated += counts.updated
                        ignored += counts.ignored + duplicates[update_type]
                    if rejects:
                        conn.execute(schema.rejected_updates.insert(), rejects)
                    if progress:
                        writers.progress([_progress_row(progress[k]) for k in sorted(progress)])
                return ApplyResult(inserted, updated, ignored, len(rejects), new_events)
            except DBAPIError as exc:
                if stage is not None:
                    stage.abort()
                # The streamed attempt's connection was opened before validation: if it is gone
                # (server restart, idle timeout), the batch is written again on a new one.
                lost = streamed and exc.connection_invalidated
                if pg_copy and _no_temp_tables(exc):
                    log.warning(
                        "The PostgreSQL role may not create temporary tables (TEMPORARY privilege): "
                        "the store writes through SQLAlchemy from now on, several times slower"
                    )
                    self._pg_copy = pg_copy = False
                    winners, events, duplicates = _collect(accepted)
                    continue
                if attempt == _RETRY_ATTEMPTS or not (lost or _retryable(exc)):
                    raise
                delay = min(0.02 * 2**attempt, 1.0) * random.uniform(0.5, 1.0)
                reason = "lost its connection" if lost else "hit a lock conflict"
                log.info("Store batch %s (attempt %d), retrying in %.3fs", reason, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _begin(self) -> Any:
        conn = self.engine.connect()
        if conn.dialect.name in ("mysql", "mariadb"):
            # READ COMMITTED avoids InnoDB gap locks between writers upserting neighbouring keys; the
            # rule is evaluated on the locked current row, so it needs no stronger isolation.
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        return _Tx(conn, immediate=conn.dialect.name == "sqlite")

    # ------------------------------------------------------------------ state read
    def read_state(self, account: str) -> dict[str, dict[str, dict[str, Any]]]:
        """Every stored state of *account*, for reconciliation against a REST snapshot.

        :returns: ``{"order": {order_id: row}, "position": {"<instrument_token>:<product>": row},
            "holding": {isin: row}, "gtt_order": {gtt_order_id: row}}``; each row is a dict of the
            table's columns (``raw`` is the Upstox JSON as received, money ``Decimal``, times aware
            UTC, ``version`` bytes). Keys follow ``Update.key`` and the simulator's ``/_sim/state``.
        """
        self._ensure_migrated()
        state: dict[str, dict[str, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for update_type, table in schema.STATE_TABLES.items():
                key_cols = schema.KEY_COLUMNS[update_type][1:]  # without "account"
                found: dict[str, dict[str, Any]] = {}
                query = sa.select(table).where(table.c.account == account).order_by(*table.primary_key)
                for mapping in conn.execute(query).mappings():
                    row = dict(mapping)
                    if isinstance(row.get("version"), memoryview):  # psycopg returns bytea as memoryview
                        row["version"] = bytes(row["version"])
                    found[":".join(str(row[c]) for c in key_cols)] = row
                state[update_type] = found
        return state

    # ------------------------------------------------------------------ progress read/write
    def get_progress(self, account: str, stream_key: str = DEFAULT_STREAM_KEY) -> dict[str, Any] | None:
        """The progress row of (*account*, *stream_key*) as a dict, or ``None``."""
        self._ensure_migrated()
        t = schema.stream_progress
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(t).where(t.c.account == account, t.c.stream_key == stream_key))
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    def set_progress_state(self, account: str, stream_key: str, state: dict[str, Any]) -> None:
        """Store an operator's free-form watermark for (*account*, *stream_key*) (last write wins)."""
        self._ensure_migrated()
        t = schema.stream_progress
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            row = {
                "account": account,
                "stream_key": stream_key,
                "batches": 0,
                "updates": 0,
                "updated_at": now,
            }
            upsert.upsert_progress(conn, t, [row])
            conn.execute(
                t.update().where(t.c.account == account, t.c.stream_key == stream_key).values(state=state)
            )

    # ------------------------------------------------------------------ operators' typed entry points
    # Operator progress, stored objects for reconciliation, the reconciliation log. The logic
    # lives in .reads and .reconciliation_log; these methods only make sure the schema exists.
    def load_operator_progress(self, key: str) -> dict[str, Any] | None:
        """The JSON object last saved under operator progress record *key*, or ``None``.

        Records live in ``upstox_stream_progress`` under the pseudo-account ``"-"``; a key longer
        than the column is shortened the same way on load and save.
        """
        return reads.operator_state(self.get_progress(reads.OPERATOR_ACCOUNT, reads.operator_stream_key(key)))

    def save_operator_progress(self, key: str, value: dict[str, Any]) -> None:
        """Insert or replace operator progress record *key* (one short transaction; last write wins)."""
        self.set_progress_state(reads.OPERATOR_ACCOUNT, reads.operator_stream_key(key), value)

    def read_stored_objects(self, account: str, update_type: str) -> dict[str, dict[str, Any]]:
        """Stored objects of *account* and *update_type*, keyed like a REST snapshot.

        Raw Upstox JSON overlaid with the typed columns the ordering rule maintains; see
        :func:`.reads.read_stored_objects`.
        """
        self._ensure_migrated()
        return reads.read_stored_objects(self.engine, account, update_type)

    def start_reconciliation_run(
        self,
        *,
        account: str,
        update_types: Sequence[str],
        upstox_conn_id: str | None = None,
        dag_id: str | None = None,
        dag_run_id: str | None = None,
    ) -> int:
        """Record a ``running`` reconciliation run in ``upstox_reconciliation_runs``; returns its id."""
        self._ensure_migrated()
        return reconciliation_log.start_run(
            self.engine,
            account=account,
            update_types=update_types,
            upstox_conn_id=upstox_conn_id,
            dag_id=dag_id,
            dag_run_id=dag_run_id,
        )

    def finish_reconciliation_run(
        self,
        run_id: int,
        *,
        account: str,
        discrepancies: Sequence[reconciliation_log.DiscrepancyRecord],
        repaired_keys: Collection[tuple[str, str]],
        compared: int,
        status: reconciliation_log.RunStatus,
    ) -> None:
        """Record the differences of run *run_id* and close it, in one transaction."""
        self._ensure_migrated()
        reconciliation_log.finish_run(
            self.engine,
            run_id,
            account=account,
            discrepancies=discrepancies,
            repaired_keys=repaired_keys,
            compared=compared,
            status=status,
        )


#: Writes the winning states of one table (unique per key, sorted by key); returns their counts.
_UpsertStates = Callable[[sa.Table, Sequence[str], list[rows.PreparedRow]], upsert.WriteCounts]


class _Writers(NamedTuple):
    """The batch writers of one connection, all inside its open transaction."""

    #: Orders and their events: ``(winners, events, accepted, in-batch duplicates)`` -> the counts
    #: over every accepted order update, and how many events were new.
    orders: Callable[
        [list[rows.PreparedRow], list[rows.PreparedRow], list[rows.PreparedRow], int],
        tuple[upsert.WriteCounts, int],
    ]
    #: Positions, holdings and GTT orders.
    states: _UpsertStates
    progress: Callable[[list[dict[str, Any]]], None]


def _writers(
    conn: Connection, write_id: int, pg_copy: bool, stage: bulk.PgOrderStage | None = None
) -> _Writers:
    """The batch writers for *conn*'s dialect and driver.

    SQLite and PostgreSQL through psycopg 3 use the driver-level statements of :mod:`.bulk` (the
    speed path, which also reuses the ``raw`` JSON text validation encoded); MySQL, MariaDB and
    PostgreSQL through another driver (psycopg2, pg8000...) the SQLAlchemy upserts of :mod:`.upsert`.
    All enforce the same rule in SQL.

    :param pg_copy: PostgreSQL through psycopg 3 with temporary tables allowed (the COPY path).
    :param stage: PostgreSQL: the batch's orders, already staged (:class:`_OrderStream`).
    """
    name = conn.dialect.name
    raw = conn.connection.driver_connection

    def driver_progress(progress_rows: list[dict[str, Any]]) -> None:
        bulk.upsert_progress(raw, name, progress_rows)

    def driver_states(
        table: sa.Table, key_cols: Sequence[str], batch: list[rows.PreparedRow]
    ) -> upsert.WriteCounts:
        write = bulk.pg_upsert_states if pg_copy else bulk.sqlite_upsert_states
        return write(raw, table, key_cols, [p.row for p in batch], [p.raw_json for p in batch])

    if pg_copy:

        def pg_orders(
            winners: list[rows.PreparedRow],
            events: list[rows.PreparedRow],
            accepted: list[rows.PreparedRow],
            duplicates: int,
        ) -> tuple[upsert.WriteCounts, int]:
            # The stage holds every accepted order update and picks winners and events itself.
            return _pg_orders(conn, stage, accepted)

        return _Writers(pg_orders, driver_states, driver_progress)

    if name == "sqlite":

        def sqlite_orders(
            winners: list[rows.PreparedRow],
            events: list[rows.PreparedRow],
            accepted: list[rows.PreparedRow],
            duplicates: int,
        ) -> tuple[upsert.WriteCounts, int]:
            counts, new_events = bulk.sqlite_write_orders(
                raw,
                [(p.row, p.raw_json) for p in winners],
                [(p.row, p.raw_json, p.state_id) for p in events],  # type: ignore[misc]
            )
            return _plus_ignored(counts, duplicates), new_events

        return _Writers(sqlite_orders, driver_states, driver_progress)

    def upsert_states(
        table: sa.Table, key_cols: Sequence[str], batch: list[rows.PreparedRow]
    ) -> upsert.WriteCounts:
        return upsert.upsert_states(conn, table, key_cols, [p.row for p in batch], write_id)

    def orders(
        winners: list[rows.PreparedRow],
        events: list[rows.PreparedRow],
        accepted: list[rows.PreparedRow],
        duplicates: int,
    ) -> tuple[upsert.WriteCounts, int]:
        counts = upsert_states(schema.orders, schema.KEY_COLUMNS[ORDER], winners)
        new_events = upsert.insert_ignore(conn, schema.order_events, _EVENT_KEY, _events(events))
        return _plus_ignored(counts, duplicates), new_events

    def progress(progress_rows: list[dict[str, Any]]) -> None:
        upsert.upsert_progress(conn, schema.stream_progress, progress_rows)

    return _Writers(orders, upsert_states, progress)


_EVENT_KEY: Final = ("account", "order_id", "state_id")


def _plus_ignored(counts: upsert.WriteCounts, duplicates: int) -> upsert.WriteCounts:
    """*counts* with the updates that lost to another of the batch counted as ignored."""
    return upsert.WriteCounts(counts.inserted, counts.updated, counts.ignored + duplicates)


def _events(batch: list[rows.PreparedRow]) -> list[dict[str, Any]]:
    return [e for e in (p.event for p in batch) if e is not None]


def _pg_orders(
    conn: Connection, stage: bulk.PgOrderStage | None, accepted: list[rows.PreparedRow]
) -> tuple[upsert.WriteCounts, int]:
    """PostgreSQL: the batch's order updates from the COPY stage (:class:`.bulk.PgOrderStage`) into
    ``upstox_orders`` and ``upstox_order_events``.

    *stage* holds them already when they were streamed during validation; otherwise every accepted
    order update is staged now, in batch order (the stage picks winners and events itself).
    """
    if stage is None:
        stage = bulk.PgOrderStage(conn.connection.driver_connection)
        for prepared in accepted:
            if prepared.state_id is not None:
                stage.add(prepared.row, prepared.raw_json, prepared.state_id)
    return stage.write()


class _OrderStream:
    """PostgreSQL (psycopg 3): the first write attempt of a batch, opened at its first order update.

    Each accepted order is COPYed to the stage while ``apply()`` validates the rest, so the server
    parses rows while Python works (the largest single cost of a batch, the ``raw`` JSON, overlaps
    with validation). If streaming fails (the connection broke), the transaction is rolled back and
    the batch is written after validation, as on the other backends.
    """

    def __init__(self, store: PortfolioStore) -> None:
        self.tx = store._begin()
        self.failed = False
        try:
            conn = self.tx.__enter__()
            self.stage = bulk.PgOrderStage(conn.connection.driver_connection)
        except BaseException:
            self.tx.__exit__(RuntimeError, None, None)
            raise

    def add(self, prepared: rows.PreparedRow) -> None:
        if self.failed:
            return
        try:
            self.stage.add(prepared.row, prepared.raw_json, prepared.state_id)  # type: ignore[arg-type]
        except Exception:
            log.info("Streaming orders to the COPY stage failed; writing after validation", exc_info=True)
            self.close()

    def close(self) -> None:
        """Abandon the stream: end the COPY and roll its transaction back (never raises)."""
        self.failed = True
        self.stage.abort()
        try:
            self.tx.__exit__(RuntimeError, None, None)
        except Exception:
            log.debug("Rolling back an abandoned stream failed", exc_info=True)


def _no_temp_tables(exc: DBAPIError) -> bool:
    """The role lacks the TEMPORARY privilege (revoked from PUBLIC in some hardened databases)."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate == "42501" and "temporary" in str(orig).lower()


def _uses_pg_copy(dialect: sa.Dialect) -> bool:
    """PostgreSQL through psycopg 3 (binary COPY with typed dumpers); psycopg2 and others take the
    SQLAlchemy path."""
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


@contextmanager
def _driver_errors(conn: Connection) -> Iterator[None]:
    """Raise errors of the driver-level statements (:mod:`.bulk`) as SQLAlchemy ``DBAPIError``s.

    Callers and the retry loop then see the same exception types (``OperationalError``,
    ``IntegrityError``...) whichever path wrote the batch.
    """
    try:
        yield
    except DBAPIError:
        raise
    except Exception as exc:
        base = conn.dialect.loaded_dbapi.Error
        if isinstance(exc, base):
            raise DBAPIError.instance(None, None, exc, base, dialect=conn.dialect) from exc
        raise


class _Tx:
    """``with`` block: one transaction on *conn*, committed on success, closed always.

    :param immediate: SQLite: take the write lock at once (``BEGIN IMMEDIATE``; the busy timeout
        queues writers), so nothing changes between the stored-key count of
        :func:`.bulk.sqlite_upsert_states` and its write, and a writer never has to upgrade a read
        snapshot another writer has made stale.
    """

    def __init__(self, conn: Connection, *, immediate: bool = False) -> None:
        self.conn = conn
        self.immediate = immediate
        self._entered = False

    def __enter__(self) -> Connection:
        if self._entered:  # opened early by an _OrderStream
            return self.conn
        self._entered = True
        self.conn.begin()
        if self.immediate:
            try:
                driver = self.conn.connection.driver_connection
                if not driver.in_transaction:  # type: ignore[union-attr]
                    driver.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
            except BaseException:
                self.conn.close()
                raise
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def _collect(
    accepted: list[rows.PreparedRow], *, orders: bool = True
) -> tuple[
    dict[str, dict[tuple[str, ...], rows.PreparedRow]],
    dict[tuple[str, str, str], rows.PreparedRow],
    dict[str, int],
]:
    """In-batch de-duplication: the winning state per key (by the version bytes the database
    compares), the first update of each distinct order state (its event), and per update type how
    many updates lost to another of the batch. With ``orders=False``, order updates are skipped
    (their winners, events and duplicates are left empty)."""
    winners: dict[str, dict[tuple[str, ...], rows.PreparedRow]] = {t: {} for t in schema.STATE_TABLES}
    events: dict[tuple[str, str, str], rows.PreparedRow] = {}
    duplicates = dict.fromkeys(schema.STATE_TABLES, 0)
    for prepared in accepted:
        if not orders and prepared.state_id is not None:
            continue
        table_winners = winners[prepared.update_type]
        current = table_winners.get(prepared.key)
        if current is None or prepared.version > current.version:
            table_winners[prepared.key] = prepared
        if current is not None:
            duplicates[prepared.update_type] += 1
        if prepared.state_id is not None:
            events.setdefault((*prepared.key, prepared.state_id), prepared)  # type: ignore[arg-type]
    return winners, events, duplicates


def _track(
    progress: dict[str, dict[str, Any]], account: str, update: Update, key: str, now: datetime
) -> None:
    entry = progress.get(account)
    if entry is None:
        entry = progress[account] = {
            "account": account,
            "stream_key": key,
            "last_seq": update.seq,
            "last_received": update,  # the latest received; its datetime is built once, when written
            "batches": 1,
            "updates": 0,
            "updated_at": now,
        }
    entry["updates"] += 1
    if update.seq > entry["last_seq"]:
        entry["last_seq"] = update.seq
    if update.received_at_us > entry["last_received"].received_at_us:
        entry["last_received"] = update


def _progress_row(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``upstox_stream_progress`` row of a :func:`_track` entry (the entry is left as is)."""
    row = {k: v for k, v in entry.items() if k != "last_received"}
    row["last_received_at"] = entry["last_received"].received_at
    return row


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _PG_RETRYABLE:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_RETRYABLE:
        return True
    return getattr(orig, "sqlite_errorcode", None) in _SQLITE_RETRYABLE


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers work while a batch is written; the busy timeout makes writers queue."""
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 30000")
        _sqlite_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


_WAL_SWITCH_SECONDS: Final = 30.0


def _sqlite_wal(cursor: Any) -> None:
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
