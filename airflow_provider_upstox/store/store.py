"""The portfolio store: ordered, idempotent persistence of :class:`Update` batches.

``apply()`` validates every update (:class:`.batch.Batch`), de-duplicates the batch in Python
(keeping the winning state per key by the same version bytes the database compares), then writes
everything in ONE transaction: order states, order events, positions, holdings, GTT orders,
rejected updates and the stream progress row, always in that table order and with rows sorted by
key so that concurrent writers lock rows in the same order.

How: one :class:`~.writers.BatchWriter` per database and driver, chosen once when the store opens
(:func:`~.writers.writer_for`: PostgreSQL COPY, SQLite driver, or SQLAlchemy Core), run by one
:class:`~.transactions.TransactionPolicy`: a deadlock or lock timeout rolls the whole batch back
and it is retried (every write is idempotent, so a retry is harmless).

One bad update never costs its batch: validation rejects whatever a database would refuse (see
:mod:`.rows`) and records it in ``upstox_rejected_updates``; if the database still refuses a value
(``DataError``), the batch is bisected to apply everything but the update(s) it refuses, which are
recorded as rejected too. Other database errors fail the whole batch, with nothing half-written.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import (
    health,
    history,
    migrations,
    reads,
    reconciliation_log,
    schema,
    trades,
    upsert,
    validation,
)
from airflow_provider_upstox.store.batch import Batch
from airflow_provider_upstox.store.results import ApplyResult, write_batch
from airflow_provider_upstox.store.rows import json_dumps
from airflow_provider_upstox.store.transactions import TransactionPolicy
from airflow_provider_upstox.store.writers import BatchWriter, SqlAlchemyWriter, WriterUnavailable, writer_for

log = logging.getLogger(__name__)

DEFAULT_STREAM_KEY = "default"
_MAX_STREAM_KEY: Final[int] = schema.stream_progress.c.stream_key.type.length  # type: ignore[attr-defined]


class PortfolioStore:
    """Airflow-free store over any SQLAlchemy engine (PostgreSQL, MySQL/MariaDB, SQLite).

    :param engine: where to write. The schema is migrated on first use (or call :meth:`migrate`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._migrated = False
        self._lock = threading.Lock()
        self._policy = TransactionPolicy(engine)
        self._writer: BatchWriter = writer_for(engine)

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

    @property
    def writer(self) -> BatchWriter:
        """How batches reach the database (chosen when the store opened; see :mod:`.writers`)."""
        return self._writer

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

    # ------------------------------------------------------------------ write
    def apply(
        self,
        updates: Iterable[Update],
        account: str | None = None,
        *,
        stream_key: str | None = None,
        health_records: Sequence[health.StreamHealth] = (),
    ) -> ApplyResult:
        """Write a batch of updates in one transaction; replays and stale states are harmless.

        :param updates: any mix of update types, in any order, duplicates allowed.
        :param account: Upstox user id for updates whose ``Update.account`` is unset (positions,
            holdings and GTT messages do not carry it; an order falls back to its ``user_id``).
        :param stream_key: name of the stream/consumer whose progress row (per account) records the
            highest seq and latest received time of the batch, in the same transaction.
        :param health_records: stream health rows (:mod:`.health`) to upsert in the same transaction
            (one statement more, no transaction more).
        :raises ValueError: a position, holding or GTT update has no account: a caller error, so
            nothing is written.
        """
        batch_updates = list(updates)
        if account is not None and (problem := validation.account_problem(account)) is not None:
            raise ValueError(f"apply(account={account!r}): {problem}")
        stream_key = stream_key or DEFAULT_STREAM_KEY
        if len(stream_key) > _MAX_STREAM_KEY or "\x00" in stream_key:
            raise ValueError(
                f"stream_key {stream_key!r} is longer than {_MAX_STREAM_KEY} characters or contains NUL"
            )
        self._ensure_migrated()
        now = datetime.now(timezone.utc)
        batch = Batch(batch_updates, account, stream_key, now, random.getrandbits(62) + 1)
        try:
            return self._write(batch, health_records)
        except sa.exc.DataError as exc:
            log.warning(
                "The database refused a value of a batch of %d updates (%s); isolating the update(s) "
                "it refuses, the rest is applied",
                len(batch.accepted),
                type(exc.orig).__name__,
            )
        return self._write_isolating(batch, health_records)

    def _write(self, batch: Batch, health_records: Sequence[health.StreamHealth] = ()) -> ApplyResult:
        """*batch* in one transaction of the policy, by the store's writer."""
        while True:
            writer = self._writer
            if not writer.streams_validation:
                batch.validate()  # before the transaction: it holds no connection meanwhile
            try:
                return self._policy.run(functools.partial(write_batch, writer, batch, health_records))
            except WriterUnavailable as exc:
                self._fall_back(writer, exc)

    def _fall_back(self, failed: BatchWriter, reason: WriterUnavailable) -> None:
        """Write through SQLAlchemy from now on: *failed* cannot work with this database.

        :raises WriterUnavailable: the generic writer itself failed (nothing to fall back to).
        """
        if isinstance(failed, SqlAlchemyWriter):
            raise reason
        with self._lock:
            if self._writer is failed:
                log.warning(
                    "The store writes through SQLAlchemy from now on, several times slower: %s", reason
                )
                self._writer = SqlAlchemyWriter()

    def _write_isolating(self, batch: Batch, health_records: Sequence[health.StreamHealth]) -> ApplyResult:
        """*batch* minus the updates the database refuses (``DataError``), found by bisection.

        The rejects and the progress rows are written last, together, with the refused updates
        recorded as rejected.
        """
        total, refused = self._policy.isolate(
            list(range(len(batch.accepted))),
            lambda positions: self._write(batch.part(positions)),
            ApplyResult.__add__,
            ApplyResult(),
        )
        rejects = list(batch.rejects)
        for i, reason in refused:
            update = batch.sources[i]
            error = InvalidUpdateError(
                f"the database refused a value: {reason}", update_type=update.update_type, key=update.key
            )
            log.warning("Rejected %s", error)
            account = batch.accepted[i].row["account"]
            rejects.append(validation.reject_row(update, account, str(error), batch.now))
        return total + self._write(batch.with_progress_only(rejects), health_records)

    # ------------------------------------------------------------------ state read
    def read_state(self, account: str) -> dict[str, dict[str, dict[str, Any]]]:
        """Every stored state of *account*, for reconciliation against a REST snapshot.

        :returns: ``{"order": {order_id: row}, "position": {"<instrument_token>:<product>": row},
            "holding": {isin: row}, "gtt_order": {gtt_order_id: row}}``; each row is a dict of the
            table's columns (``raw`` is the Upstox JSON as received, money ``Decimal``, times aware
            UTC, ``version`` bytes). Keys follow ``Update.key`` and the simulator's ``/_sim/state``.
        """
        self._ensure_migrated()
        return reads.read_state(self.engine, account)

    # ------------------------------------------------------------------ progress read/write
    def get_progress(self, account: str, stream_key: str = DEFAULT_STREAM_KEY) -> dict[str, Any] | None:
        """The progress row of (*account*, *stream_key*) as a dict, or ``None``."""
        self._ensure_migrated()
        return reads.progress_row(self.engine, account, stream_key)

    def set_progress_state(self, account: str, stream_key: str, state: dict[str, Any]) -> None:
        """Store an operator's free-form watermark for (*account*, *stream_key*) (last write wins)."""
        self._ensure_migrated()
        reads.save_progress_state(self.engine, account, stream_key, state)

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

    def load_operator_progress_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`load_operator_progress` of many keys in one query (keys without a record are absent)."""
        self._ensure_migrated()
        return reads.load_operator_states(self.engine, keys)

    def save_operator_progress_many(self, states: dict[str, dict[str, Any]]) -> None:
        """:meth:`save_operator_progress` of many keys in one transaction."""
        self._ensure_migrated()
        reads.save_operator_states(self.engine, states, upsert.progress_upsert(self.engine.dialect.name))

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

    # ------------------------------------------------------------------ history backfill and fills
    # The to-do list and the fills live in the database (.history, .trades): a backfill that a drop
    # or a restart interrupts resumes from there. The backfill itself is airflow_provider_upstox.backfill.
    def queue_history_backfill(self, account: str, updates: Iterable[Update]) -> dict[str, str]:
        """Queue the orders of the snapshot rows in *updates* whose state the store never recorded.

        Call it *before* applying those updates (after, their states are recorded).

        :returns: the queued order ids, each with its reason (``unseen`` or ``changed``).
        """
        self._ensure_migrated()
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            found = history.gaps(conn, account, updates, now)
            history.enqueue(conn, account, found, now)
        return found

    def pending_history_backfill(self, account: str, limit: int = 100, max_attempts: int = 5) -> list[str]:
        """Order ids whose history is still to be read (least tried, oldest first)."""
        self._ensure_migrated()
        with self.engine.connect() as conn:
            return history.pending(conn, account, limit, max_attempts)

    def accounts_with_pending_backfill(self, max_attempts: int = 5) -> list[str]:
        """The accounts whose history backfill queue is not empty (see :meth:`pending_history_backfill`)."""
        self._ensure_migrated()
        with self.engine.connect() as conn:
            return history.accounts_pending(conn, max_attempts)

    def record_order_history(
        self,
        account: str,
        order_id: str,
        steps: Sequence[Update],
        fills: Sequence[Any],
        received_at: datetime,
    ) -> tuple[int, int]:
        """Record the steps of *order_id* the store is missing, and its fills, then close its entry.

        The steps go through :meth:`apply` (the ordering rule keeps the order's current row; each
        missing step only adds its ``upstox_order_events`` row); steps already recorded are skipped
        before, so they change nothing at all. Fills, and the entry's close, follow in one
        transaction: interrupted in between, the entry stays queued and a retry is harmless.

        :returns: (states added, fills added).
        """
        self._ensure_migrated()
        now = datetime.now(timezone.utc)
        with self.engine.connect() as conn:
            known = history.known_states(conn, account, [order_id]).get(order_id, set())
        missing = [u for u in steps if history.state_id_of(u, account, now) not in known]
        added = self.apply(missing, account=account, stream_key="history").events if missing else 0
        with self.engine.begin() as conn:
            written = trades.write_trades(conn, account, fills, trades.ORDER_TRADES, received_at)
            history.finish(conn, account, order_id, added, written.inserted, now)
        return added, written.inserted

    def history_backfill_failed(self, account: str, order_id: str, error: str) -> None:
        """Count a failed attempt at reading *order_id*'s history (it stays queued)."""
        self._ensure_migrated()
        with self.engine.begin() as conn:
            history.failed(conn, account, order_id, error)

    def history_backfill_counts(self, account: str) -> dict[str, int]:
        """Pending, done and failing entries of *account*'s backfill queue."""
        self._ensure_migrated()
        with self.engine.connect() as conn:
            return history.queue_counts(conn, account)

    def record_trade_book(
        self, account: str, fills: Sequence[Any], received_at: datetime
    ) -> trades.TradeWrite:
        """Insert the fills of the day's trade book the store does not have yet (each fill once)."""
        self._ensure_migrated()
        with self.engine.begin() as conn:
            return trades.write_trades(conn, account, fills, trades.TRADE_BOOK, received_at)

    def filled_by_fills(self, account: str) -> dict[str, int]:
        """The sum of the stored fills' quantities per order id of *account*."""
        self._ensure_migrated()
        with self.engine.connect() as conn:
            return trades.fills_by_order(conn, account)

    # ------------------------------------------------------------------ stream health (.health)
    def record_stream_health(self, records: Sequence[health.StreamHealth]) -> None:
        """Upsert the health rows of *records*' connections (one statement; replays change nothing)."""
        self._ensure_migrated()
        with self.engine.begin() as conn:
            health.write(conn, records, datetime.now(timezone.utc))

    def read_stream_health(self, limit: int = health.MAX_ROWS) -> list[dict[str, Any]]:
        """Every connection's health row (up to *limit*), as dicts of ``upstox_stream_health``."""
        self._ensure_migrated()
        with self.engine.connect() as conn:
            return health.read_rows(conn, limit)
