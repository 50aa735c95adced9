"""Database access shared by the operators: the portfolio store of an Airflow SQL connection.

The engine comes from the connection's common-sql hook
(:func:`~airflow_provider_upstox.hooks.store.get_portfolio_store`); everything else goes through
typed :class:`~airflow_provider_upstox.store.PortfolioStore` methods. Progress (stream task counters,
asset-event watermarks) lives in the same database as the data it describes, so that a watermark
can never run ahead of the rows it covers on another database: see
:meth:`PortfolioStore.load_operator_progress`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_upstox.models.events import StreamEvent
    from airflow_provider_upstox.store import PortfolioStore

log = logging.getLogger(__name__)


def open_store(sql_conn_id: str) -> PortfolioStore:
    """The portfolio store of the Airflow SQL connection *sql_conn_id*, its schema migrated.

    Migrating here (idempotent, safe with concurrent tasks) makes a store written by a newer provider
    fail the task at its start with :class:`~airflow_provider_upstox.store.SchemaVersionError`.
    """
    # Imported here: the store and common-sql add ~50 ms to every DAG file that imports an operator.
    from airflow_provider_upstox.hooks.store import get_portfolio_store

    store = get_portfolio_store(sql_conn_id)
    store.migrate()
    return store


def load_progress(store: PortfolioStore, key: str) -> dict[str, Any] | None:
    """The JSON progress record *key*, or ``None``."""
    return store.load_operator_progress(key)


def save_progress(store: PortfolioStore, key: str, value: dict[str, Any]) -> None:
    """Insert or replace the JSON progress record *key* (one short transaction)."""
    store.save_operator_progress(key, value)


def health_records(
    conn_id: str, event: StreamEvent, consumer: str, observed_at: datetime | None = None
) -> list[Any]:
    """The health record of *event* for :meth:`PortfolioStore.apply` (its batch's transaction), or
    none when *conn_id* cannot key a health row (longer than the column): a batch must never fail
    for its health row."""
    from airflow_provider_upstox.store import health

    if len(conn_id) > health.MAX_CONN_ID:
        log.warning("Connection id %r is too long for the stream health table; not recorded", conn_id)
        return []
    return [health.from_event(conn_id, event, consumer, observed_at or datetime.now(timezone.utc))]


def record_health(
    store: PortfolioStore,
    conn_id: str,
    event: StreamEvent,
    consumer: str,
    observed_at: datetime | None = None,
) -> None:
    """Record *event* in the stream health row of *conn_id* (:mod:`~airflow_provider_upstox.store.health`)."""
    record_stream_health(store, health_records(conn_id, event, consumer, observed_at))


def record_stream_health(store: PortfolioStore, records: list[Any]) -> None:
    """One upsert of *records* on its own; a failure is logged, never raised.

    Health is for people watching: a database hiccup here must not fail a task whose batch is
    already committed (the next event records the health again).
    """
    if not records:
        return
    try:
        store.record_stream_health(records)
    except Exception:
        log.warning("Could not record the stream health", exc_info=True)
