"""How every batch write is run: one transaction per attempt, retried on conflicts, net for bad values.

:class:`TransactionPolicy` is used by ``PortfolioStore.apply()`` whichever writer writes:

- :meth:`~TransactionPolicy.transaction`: one transaction on a pooled connection, with what each
  dialect needs for writers not to block one another needlessly (MySQL/MariaDB: ``READ
  COMMITTED``, no gap locks between neighbouring keys; SQLite: ``BEGIN IMMEDIATE``, the write lock
  at once, so a writer never upgrades a read snapshot another writer made stale). Errors raised by
  the driver itself (the driver-level writers) come out as SQLAlchemy ``DBAPIError``s, as from
  any SQLAlchemy statement, with ``connection_invalidated`` set when the connection is gone.
- :meth:`~TransactionPolicy.run`: a deadlock, lock timeout, serialization failure or busy
  database rolls the whole batch back and it is run again (up to :data:`RETRY_ATTEMPTS` times, with
  a jittered, capped backoff); a lost connection (server restart, idle timeout) is retried once, on
  a new one. Every write is idempotent, so running a batch again is harmless.
- :meth:`~TransactionPolicy.isolate`: when the database refuses a value (``DataError``) that
  validation did not foresee, bisect the batch to write everything but the refused updates.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, NoReturn, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError

from airflow_provider_upstox.store.upsert import MYSQL_DIALECTS

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RETRY_ATTEMPTS: Final = 8
#: SQLSTATEs worth a retry: serialization failure, deadlock detected, lock not available.
PG_RETRYABLE: Final = frozenset({"40001", "40P01", "55P03"})
#: MySQL/MariaDB error numbers worth a retry: lock wait timeout, deadlock.
MYSQL_RETRYABLE: Final = frozenset({1205, 1213})
#: SQLite result codes worth a retry: SQLITE_BUSY, SQLITE_LOCKED.
SQLITE_RETRYABLE: Final = frozenset({5, 6})
#: How much of a refused value's error message a reject row keeps.
_REASON_LIMIT: Final = 500


def is_retryable(exc: DBAPIError) -> bool:
    """A lock conflict: the same batch may succeed when run again."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in PG_RETRYABLE:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in MYSQL_RETRYABLE:
        return True
    return getattr(orig, "sqlite_errorcode", None) in SQLITE_RETRYABLE


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: doubling from 40 ms, capped at 1 s, jittered."""
    return float(min(0.02 * 2**attempt, 1.0) * random.uniform(0.5, 1.0))


class TransactionPolicy:
    """Transactions, retries and the isolation of refused values for one engine.

    :param attempts: runs of a batch at most (lock conflicts).
    :param delay: seconds to wait after failed attempt *n* (injectable: tests use zero).
    """

    def __init__(
        self, engine: Engine, *, attempts: int = RETRY_ATTEMPTS, delay: Callable[[int], float] = backoff
    ) -> None:
        self.engine = engine
        self.attempts = attempts
        self.delay = delay
        name = engine.dialect.name
        self._isolation = "READ COMMITTED" if name in MYSQL_DIALECTS else None
        self._immediate = name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction on a pooled connection: committed if the block succeeds, else rolled back.

        :raises sqlalchemy.exc.DBAPIError: for any error of the driver (translated if raw).
        """
        conn = self.engine.connect()
        try:
            if self._isolation is not None:
                conn = conn.execution_options(isolation_level=self._isolation)
            conn.begin()
            try:
                if self._immediate:
                    driver = conn.connection.driver_connection
                    if not driver.in_transaction:  # type: ignore[union-attr]
                        driver.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
                yield conn
            except BaseException as exc:
                self._rollback(conn)
                self._raise_translated(conn, exc)
            try:
                conn.commit()
            except Exception as exc:
                self._raise_translated(conn, exc)
        finally:
            conn.close()

    @staticmethod
    def _rollback(conn: Connection) -> None:
        try:
            conn.rollback()
        except Exception:  # a lost connection cannot roll back: the server already has
            log.debug("Rolling back a failed batch failed", exc_info=True)

    @staticmethod
    def _raise_translated(conn: Connection, exc: BaseException) -> NoReturn:
        """Raise *exc* as a SQLAlchemy ``DBAPIError`` if the driver raised it directly, else as is."""
        dialect = conn.dialect
        base = dialect.loaded_dbapi.Error
        if isinstance(exc, DBAPIError) or not isinstance(exc, base):
            raise exc
        # The rollback before this finds most lost connections (SQLAlchemy then invalidates it).
        lost = conn.invalidated
        if not lost:
            try:
                lost = dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
            except Exception:  # the connection is already closed
                lost = True
        raise DBAPIError.instance(
            None, None, exc, base, connection_invalidated=lost, dialect=dialect
        ) from exc

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a transaction, run again on a lock conflict or (once) a lost connection."""
        reconnected = False
        for attempt in range(1, self.attempts + 1):
            try:
                with self.transaction() as conn:
                    return work(conn)
            except DBAPIError as exc:
                lost = exc.connection_invalidated and not reconnected
                if attempt == self.attempts or not (lost or is_retryable(exc)):
                    raise
                reconnected |= lost
                delay = self.delay(attempt)
                reason = "lost its connection" if lost else "hit a lock conflict"
                log.info("Store batch %s (attempt %d), retrying in %.3fs", reason, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def isolate(
        items: list[T], write: Callable[[list[T]], R], merge: Callable[[R, R], R], nothing: R
    ) -> tuple[R, list[tuple[T, str]]]:
        """Write *items* except those the database refuses (``DataError``), found by bisection.

        Validation should reject every such value first; this is the net under it, so that one
        value the database refuses (a limit nobody foresaw) is rejected and recorded instead of
        failing, and losing, its whole batch. Each part is its own transaction (:meth:`run`): that
        is safe because every write is idempotent and ordered by the rule in SQL.

        :returns: the merged result of the parts written, and each refused item with the reason.
        """
        refused: list[tuple[T, str]] = []

        def attempt(part: list[T]) -> R:
            if not part:
                return nothing
            try:
                return write(part)
            except DataError as exc:
                if len(part) == 1:
                    refused.append((part[0], str(exc.orig).splitlines()[0][:_REASON_LIMIT]))
                    return nothing
            mid = len(part) // 2
            return merge(attempt(part[:mid]), attempt(part[mid:]))

        return attempt(items), refused
