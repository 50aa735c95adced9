"""What ``apply()`` returns, and how one batch goes through a writer, table by table.

:func:`write_batch` is the one place that fixes the order in which every writer touches the tables
(orders and their events, positions, holdings, GTT orders, rejected updates, progress, stream
health): concurrent writers that lock in the same order cannot deadlock each other on it. It runs
inside one transaction of :class:`~.transactions.TransactionPolicy` (see ``PortfolioStore._write``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from airflow_provider_upstox.models.updates import ORDER
from airflow_provider_upstox.store import health, schema
from airflow_provider_upstox.store.batch import UPDATE_TYPES, Batch
from airflow_provider_upstox.store.writers import BatchWriter


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


def write_batch(
    writer: BatchWriter, batch: Batch, health_records: Sequence[health.StreamHealth], conn: Connection
) -> ApplyResult:
    """Every table of *batch* through *writer*, in the one table order all writers keep."""
    counts, new_events = writer.write_orders(conn, batch)
    inserted, updated, ignored = counts.inserted, counts.updated, counts.ignored
    for update_type in UPDATE_TYPES:
        if update_type == ORDER:
            continue
        winners, duplicates = batch.winners(update_type)
        counts = writer.write_states(conn, update_type, winners)
        inserted += counts.inserted
        updated += counts.updated
        ignored += counts.ignored + duplicates
    if batch.rejects:
        conn.execute(schema.rejected_updates.insert(), batch.rejects)
    progress = batch.progress_rows()
    if progress:
        writer.write_progress(conn, progress)
    if health_records:
        health.write(conn, health_records, batch.now)
    return ApplyResult(inserted, updated, ignored, len(batch.rejects), new_events)
