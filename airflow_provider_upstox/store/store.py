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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import ORDER, Update
from airflow_provider_upstox.store import bulk, migrations, rows, schema, upsert, validation

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
        for update in batch:
            account_id = rows.resolve_account(update, account)
            if account_id is None and update.update_type in rows.STORED_TYPES and update.update_type != ORDER:
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
        for reject in rejects:
            log.warning("Rejected %s", reject["error"])
        try:
            return self._write(*_collect(accepted), rejects, progress, write_id)
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
                return self._write(*_collect(items), [], {}, write_id)
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
        empty: dict[str, dict[tuple[str, ...], rows.PreparedRow]] = {t: {} for t in schema.STATE_TABLES}
        tail = self._write(empty, {}, 0, rejects, progress, write_id)
        return total + tail

    def _write(
        self,
        winners: dict[str, dict[tuple[str, ...], rows.PreparedRow]],
        events: dict[tuple[str, str, str], rows.PreparedRow],
        duplicates: int,
        rejects: list[dict[str, Any]],
        progress: dict[str, dict[str, Any]],
        write_id: int,
    ) -> ApplyResult:
        for attempt in range(1, _RETRY_ATTEMPTS + 1):
            try:
                with self._begin() as conn, _driver_errors(conn):
                    upsert_states, insert_ignore = _writers(conn, write_id)
                    inserted = updated = ignored = new_events = 0
                    pg = conn.dialect.name == "postgresql"
                    event_batch = [events[k] for k in sorted(events)]
                    for update_type, table in schema.STATE_TABLES.items():
                        batch = [winners[update_type][k] for k in sorted(winners[update_type])]
                        if pg and update_type == ORDER:
                            counts, new_events = _pg_orders(conn, batch, event_batch)
                        else:
                            counts = upsert_states(table, schema.KEY_COLUMNS[update_type], batch)
                        inserted += counts.inserted
                        updated += counts.updated
                        ignored += counts.ignored
                    if not pg:
                        new_events = insert_ignore(
                            schema.order_events, ("account", "order_id", "state_id"), event_batch
                        )
                    if rejects:
                        conn.execute(schema.rejected_updates.insert(), rejects)
                    if progress:
                        upsert.upsert_progress(
                            conn,
                            schema.stream_progress,
                            [_progress_row(progress[k]) for k in sorted(progress)],
                        )
                return ApplyResult(inserted, updated, ignored + duplicates, len(rejects), new_events)
            except DBAPIError as exc:
                if attempt == _RETRY_ATTEMPTS or not _retryable(exc):
                    raise
                delay = min(0.02 * 2**attempt, 1.0) * random.uniform(0.5, 1.0)
                log.info("Store batch hit a lock conflict (attempt %d), retrying in %.3fs", attempt, delay)
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


#: Writers of prepared rows (state rows, or the ``event`` of each for the events table).
_UpsertStates = Callable[[sa.Table, Sequence[str], list[rows.PreparedRow]], upsert.WriteCounts]
_InsertIgnore = Callable[[sa.Table, Sequence[str], list[rows.PreparedRow]], int]


def _writers(conn: Connection, write_id: int) -> tuple[_UpsertStates, _InsertIgnore]:
    """The batch writers for *conn*'s dialect, all inside *conn*'s open transaction.

    PostgreSQL and SQLite use the driver-level statements of :mod:`.bulk` (the speed path, which
    also reuses the ``raw`` JSON text validation encoded); MySQL and MariaDB the SQLAlchemy upserts
    of :mod:`.upsert`. Both enforce the same rule in SQL.
    """
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        raw = conn.connection.driver_connection
        pg = name == "postgresql"
        bulk_upsert = bulk.pg_upsert_states if pg else bulk.sqlite_upsert_states
        bulk_ignore = bulk.pg_insert_ignore if pg else bulk.sqlite_insert_ignore

        def bulk_states(
            table: sa.Table, key_cols: Sequence[str], batch: list[rows.PreparedRow]
        ) -> upsert.WriteCounts:
            return bulk_upsert(raw, table, key_cols, [p.row for p in batch], [p.raw_json for p in batch])

        def bulk_events(table: sa.Table, key_cols: Sequence[str], batch: list[rows.PreparedRow]) -> int:
            sources = [p for p in batch if p.event is not None]
            return bulk_ignore(raw, table, key_cols, _events(sources), [p.raw_json for p in sources])

        return bulk_states, bulk_events

    def upsert_states(
        table: sa.Table, key_cols: Sequence[str], batch: list[rows.PreparedRow]
    ) -> upsert.WriteCounts:
        return upsert.upsert_states(conn, table, key_cols, [p.row for p in batch], write_id)

    def insert_ignore(table: sa.Table, key_cols: Sequence[str], batch: list[rows.PreparedRow]) -> int:
        return upsert.insert_ignore(conn, table, key_cols, _events(batch))

    return upsert_states, insert_ignore


def _events(batch: list[rows.PreparedRow]) -> list[dict[str, Any]]:
    return [p.event for p in batch if p.event is not None]


def _pg_orders(
    conn: Connection, batch: list[rows.PreparedRow], event_batch: list[rows.PreparedRow]
) -> tuple[upsert.WriteCounts, int]:
    """PostgreSQL: winning order states and new events in one statement (:func:`.bulk.pg_write_orders`).

    Every event's values equal its source update's order row, so one payload entry per update
    serves both tables, flagged as winner and/or event source.
    """
    winners = {p.key: p for p in batch}
    entries: list[tuple[tuple[str, ...], int, dict[str, Any], str | None, str, bool, bool]] = []
    event_sources = set()
    for prepared in event_batch:
        state_id: str = prepared.event["state_id"]  # type: ignore[index]
        key = (prepared.key[0], prepared.key[1], state_id)
        event_sources.add(id(prepared))
        is_winner = winners.get(prepared.key) is prepared
        entries.append((key, 0, prepared.row, prepared.raw_json, state_id, is_winner, True))
    for prepared in batch:
        if id(prepared) not in event_sources:  # its state was seen first in another update of the batch
            state_id = prepared.event["state_id"]  # type: ignore[index]
            key = (prepared.key[0], prepared.key[1], state_id)
            entries.append((key, 1, prepared.row, prepared.raw_json, state_id, True, False))
    entries.sort(key=lambda e: (e[0], e[1]))
    ordered = [(row, raw, state_id, w, e) for _, _, row, raw, state_id, w, e in entries]
    return bulk.pg_write_orders(conn.connection.driver_connection, ordered, len(batch))


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

    def __enter__(self) -> Connection:
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
    accepted: list[tuple[Update, rows.PreparedRow]],
) -> tuple[
    dict[str, dict[tuple[str, ...], rows.PreparedRow]], dict[tuple[str, str, str], rows.PreparedRow], int
]:
    """In-batch de-duplication: the winning state per key (by the version bytes the database
    compares), the first update of each distinct order state (its event), and how many updates
    lost to another of the batch."""
    winners: dict[str, dict[tuple[str, ...], rows.PreparedRow]] = {t: {} for t in schema.STATE_TABLES}
    events: dict[tuple[str, str, str], rows.PreparedRow] = {}
    duplicates = 0
    for _update, prepared in accepted:
        table_winners = winners[prepared.update_type]
        current = table_winners.get(prepared.key)
        if current is None or prepared.version > current.version:
            table_winners[prepared.key] = prepared
        duplicates += current is not None
        if prepared.event is not None:
            ev = prepared.event
            events.setdefault((ev["account"], ev["order_id"], ev["state_id"]), prepared)
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
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()
