"""The :class:`BatchWriter` protocol every write strategy implements (see :mod:`.`)."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.engine import Connection

from airflow_provider_upstox.store.batch import Batch
from airflow_provider_upstox.store.rows import PreparedRow
from airflow_provider_upstox.store.upsert import WriteCounts


class WriterUnavailable(Exception):
    """The writer cannot work with this database (e.g. the role may not create temporary tables).

    Raised inside the batch's transaction, which is rolled back; the store switches to the
    generic writer for good and writes the batch again.
    """


class BatchWriter(Protocol):
    """Writes the parts of a :class:`~..batch.Batch`, all inside the caller's transaction."""

    #: ``True``: :meth:`write_orders` consumes ``Batch.stream()`` (validation overlaps the
    #: writing); ``False``: the batch is validated before its transaction begins.
    streams_validation: bool

    def write_orders(self, conn: Connection, batch: Batch) -> tuple[WriteCounts, int]:
        """Upsert the batch's order states and insert their new events.

        :returns: the counts over every accepted order update (in-batch losers count as ignored)
            and how many events were new.
        """
        ...

    def write_states(self, conn: Connection, update_type: str, winners: list[PreparedRow]) -> WriteCounts:
        """Upsert *winners* (one per key, sorted by key) of a position/holding/GTT table."""
        ...

    def write_progress(self, conn: Connection, progress: list[dict[str, Any]]) -> None:
        """Advance the ``upstox_stream_progress`` rows (sorted by key)."""
        ...
