"""Stream health per connection: what the operators record after each event, what the page reads.

The trigger runs in the triggerer, the plugin page in the API server: the one place both reach is
the store, so each consumer of the trigger's events (the continuous operator, the asset-event
operator) records one row per ``upstox`` connection in ``upstox_stream_health`` after persisting an
event: its state (``connected``, ``idle``, ``token_wait``, ``error``, or ``stopped`` when the
continuous operator ends on a stop rule), the newest live message, the stream client's counters and
lag, the last error's *kind* (never its text: the row is shown to everyone who may read the
connection).

One upsert per event (or per chunk of asset events), duplicate-safe: a row only moves forward in
``observed_at`` (the event's time), so a repeated or late event (HA triggerers, a second DAG run)
changes nothing, and ``last_message_at`` only grows. The statement is built in :mod:`.upsert`.

How healthy a row is depends on the time of reading (a stream that stopped sending is *stale*),
so :func:`assess` ranks rows when they are read, not when they are written. No Airflow import here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    IdleEvent,
    StreamEvent,
    TokenWaitEvent,
)
from airflow_provider_upstox.models.updates import STREAM
from airflow_provider_upstox.store import schema, upsert

CONNECTED: Final = "connected"
IDLE: Final = "idle"
TOKEN_WAIT: Final = "token_wait"
ERROR: Final = "error"
#: The continuous operator ended its try on a stop rule (``stop_at``, ``stop_after_idle``...).
STOPPED: Final = "stopped"
#: Who recorded a row: the continuous operator (deferral mode) or the asset-event operator.
TASK: Final = "task"
WATCHER: Final = "watcher"

#: Health labels, worst first: the order of the page (and of :func:`assess`'s rank).
HEALTH_ORDER: Final = ("error", "token refused", "stale", "lagging", "no stream", "stopped", "ok")
#: Labels that need nobody's attention; every other one does.
FINE: Final = frozenset({"stopped", "ok"})

#: Defaults of :func:`assess`: a stream that recorded nothing for 10 minutes is stale (the continuous
#: operator records at least every ``idle_timeout``, 60 s by default), one whose newest batch waited
#: more than 5 s is lagging.
DEFAULT_STALE_AFTER_S: Final = 600.0
DEFAULT_LAG_WARN_MS: Final = 5000.0
#: Most rows :func:`read_rows` returns (a thousand accounts fit many times over).
MAX_ROWS: Final = 20_000
#: Longest connection id a health row can hold (the key column's length).
MAX_CONN_ID: Final = 191


@dataclass(frozen=True)
class StreamHealth:
    """One event's contribution to its connection's health row (``None``: keep the stored value)."""

    conn_id: str
    consumer: str
    state: str
    observed_at: datetime
    account: str | None = None
    last_message_at: datetime | None = None
    connection_epoch: int | None = None
    reconnects: int | None = None
    messages: int | None = None
    lag_ms: float | None = None
    pending: int | None = None
    error_kind: str | None = None
    token_refused_since: datetime | None = None


def _utc_us(epoch_us: int) -> datetime:
    return datetime.fromtimestamp(epoch_us / 1e6, timezone.utc)


def from_event(conn_id: str, event: StreamEvent, consumer: str, observed_at: datetime) -> StreamHealth:
    """The health record of one decoded trigger event of *conn_id*, observed at *observed_at*."""
    if isinstance(event, (BatchEvent, IdleEvent)):
        stats = event.stats
        last_message = None
        if isinstance(event, BatchEvent):
            live = [u.received_at_us for u in event.updates if u.source == STREAM]
            last_message = _utc_us(max(live)) if live else None
        return StreamHealth(
            conn_id=conn_id,
            consumer=consumer,
            state=CONNECTED if isinstance(event, BatchEvent) else IDLE,
            observed_at=observed_at,
            account=event.account,
            last_message_at=last_message,
            connection_epoch=stats.connection,
            reconnects=stats.reconnects,
            messages=stats.messages,
            lag_ms=stats.lag_ms,
            pending=stats.pending,
        )
    if isinstance(event, TokenWaitEvent):
        return StreamHealth(
            conn_id=conn_id,
            consumer=consumer,
            state=TOKEN_WAIT,
            observed_at=observed_at,
            account=event.account,
            token_refused_since=_utc_us(event.since_us),
        )
    assert isinstance(event, ErrorEvent)
    return StreamHealth(
        conn_id=conn_id,
        consumer=consumer,
        state=ERROR,
        observed_at=observed_at,
        account=event.account,
        error_kind=str(event.kind),
    )


def stopped(conn_id: str, consumer: str, observed_at: datetime) -> StreamHealth:
    """The record of a stream its operator stopped on a stop rule (the other columns are kept)."""
    return StreamHealth(conn_id=conn_id, consumer=consumer, state=STOPPED, observed_at=observed_at)


def write(conn: Connection, records: Sequence[StreamHealth], now: datetime) -> None:
    """Upsert *records* (at most one per connection: the newest wins) in one statement."""
    newest: dict[str, StreamHealth] = {}
    for record in records:
        if not record.conn_id or len(record.conn_id) > MAX_CONN_ID:
            raise ValueError(f"conn_id {record.conn_id!r} is empty or longer than {MAX_CONN_ID} characters")
        known = newest.get(record.conn_id)
        if known is None or record.observed_at >= known.observed_at:
            newest[record.conn_id] = record
    if not newest:
        return
    rows = []
    for conn_id in sorted(newest):  # key order: concurrent writers lock rows in the same order
        row = asdict(newest[conn_id])
        row["account"] = (row["account"] or None) and str(row["account"])[:64]
        row["state_since"] = row["observed_at"]
        row["last_event_at"] = now
        row["error_at"] = row["observed_at"] if row["error_kind"] else None
        rows.append(row)
    conn.execute(upsert.health_upsert(conn.dialect.name), rows)


def read_rows(conn: Connection, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    """Every health row (up to *limit*), by connection id."""
    t = schema.stream_health
    query = sa.select(t).order_by(t.c.conn_id).limit(limit)
    return [dict(row) for row in conn.execute(query).mappings()]


def assess(
    row: Mapping[str, Any] | None,
    now: datetime,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    lag_warn_ms: float = DEFAULT_LAG_WARN_MS,
) -> str:
    """The health label of a row at *now* (one of :data:`HEALTH_ORDER`; ``None``: ``no stream``)."""
    if row is None:
        return "no stream"
    if row["state"] == ERROR:
        return "error"
    if row["state"] == TOKEN_WAIT:
        return "token refused"
    if row["state"] == STOPPED:  # on purpose (after market hours, say): not stale, however old
        return "stopped"
    if (now - row["last_event_at"]).total_seconds() > stale_after_s:
        return "stale"
    if row.get("lag_ms") is not None and row["lag_ms"] > lag_warn_ms:
        return "lagging"
    return "ok"


def rank(label: str) -> int:
    """Sort key of a health label: worst first."""
    return HEALTH_ORDER.index(label)
