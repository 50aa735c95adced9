"""The drain loop of the persist task: every watched asset's events after its watermark, in one loop.

One persist task serves every account of the AssetWatcher DAG. Before issue 18 it drained each
asset on its own (read, apply, save the watermark, read again until nothing new: a store round
trip per asset and per pass, and an asset drained up to ``drain_seconds`` before the next one was
even read). Here one loop serves them all: the watermarks are loaded in one query, each pass reads
only the assets whose previous read found something new (the first pass reads them all), the
updates of every account go to the store in shared chunks (one transaction each, whatever the
number of accounts in it), and the watermarks of the assets those chunks covered are saved in
one transaction after each chunk. Re-reads within one task look back less
(:data:`REREAD_LOOKBACK`). The per-asset rules (look-back, ids applied in the look-back window,
bad events counted and skipped) are those of
:mod:`airflow_provider_upstox.operators.asset_events`, which documents them.

No Airflow import: the accessor is anything with ``after(iso) -> iterable`` and iteration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from airflow_provider_upstox.models.events import TokenWaitEvent
from airflow_provider_upstox.models.updates import SNAPSHOT, Update
from airflow_provider_upstox.operators._db import record_stream_health
from airflow_provider_upstox.store import PortfolioStore

#: Look-back of the re-reads within one task: the first read of each task looks back the full
#: look-back (events another run may have missed); a re-read follows this task's own read by
#: seconds, and a late commit is a matter of milliseconds (see asset_events).
REREAD_LOOKBACK = timedelta(seconds=5)

COUNT_NAMES = (
    "events", "batches", "updates", "errors", "token_refusals", "invalid", "foreign", "skipped", "passes",
)  # fmt: skip


class Queued(NamedTuple):
    """One account batch queued from an asset event."""

    updates: int
    account: str
    conn_id: str | None  #: the connection the event names (a group watcher's events do)


#: Queues one asset event's updates under their accounts (``asset_events._queue_updates``), and
#: appends the stream health records its events make to the last list.
Queuer = Callable[
    [Any, Any, dict[str, list[Update]], dict[str, int], list[TokenWaitEvent], list[Any]], list[Queued]
]


@dataclass
class Cursor:
    """One asset's place in the drain: its watermark and what this task did with it."""

    asset: Any
    key: str
    mark_dt: datetime | None = None
    recent: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_NAMES, 0))
    handled: set[int] = field(default_factory=set)  #: applied by this task
    skipped: set[int] = field(default_factory=set)  #: read, but applied before this task
    refusals: list[TokenWaitEvent] = field(default_factory=list)
    last: Any = None  #: the last event queued, the next watermark once applied
    #: the connection of a one-account asset (``None`` for a group's: its events name theirs)
    conn_id: str | None = None
    #: Upstox account -> connection id, of every account seen in this asset's batches (kept in the
    #: watermark record: the history backfill is run per connection, the store's queue is per account)
    conns: dict[str, str] = field(default_factory=dict)
    snapshots: set[str] = field(default_factory=set)  #: accounts whose batches carried snapshot rows
    dirty: bool = False  #: events queued since the watermark was last saved
    read_s: float = 0.0

    @classmethod
    def load(cls, asset: Any, key: str, mark: Mapping[str, Any] | None, conn_id: str | None) -> Cursor:
        mark = mark or {}
        return cls(
            asset=asset,
            key=key,
            mark_dt=datetime.fromisoformat(mark["timestamp"]) if mark.get("timestamp") else None,
            recent={int(k): v for k, v in (mark.get("recent") or {}).items()},
            conn_id=conn_id,
            conns=dict(mark.get("conns") or {}),
        )

    def conn_of(self, account: str) -> str | None:
        return self.conns.get(account) or self.conn_id

    def read(self, accessor: Any, lookback: timedelta) -> list[Any]:
        # ``after()`` of Airflow's accessor resets its cache, so every read is a fresh query.
        started = time.perf_counter()
        events = list(accessor.after((self.mark_dt - lookback).isoformat()) if self.mark_dt else accessor)
        self.read_s += time.perf_counter() - started
        self.counts["passes"] += 1
        events.sort(key=lambda e: (e.timestamp, e.id))
        return events

    def watermark(self, lookback: timedelta) -> dict[str, Any]:
        """Advance to the last queued event (call once its updates are applied); the record to save."""
        last = self.last
        horizon = last.timestamp - lookback
        kept = {i: t for i, t in self.recent.items() if datetime.fromisoformat(t) >= horizon}
        self.recent = kept
        self.mark_dt = last.timestamp
        self.dirty = False
        record: dict[str, Any] = {
            "timestamp": last.timestamp.isoformat(),
            "event_id": last.id,
            "recent": {str(i): t for i, t in kept.items()},
        }
        if self.conns:
            record["conns"] = self.conns
        return record


def drain(
    store: PortfolioStore,
    cursors: Sequence[Cursor],
    accessors: Mapping[str, Any],
    queue_updates: Queuer,
    *,
    lookback: timedelta,
    chunk_updates: int,
    drain_seconds: float,
    flush_seconds: float = 1.0,
) -> None:
    """Apply every not yet persisted event of every cursor's asset (see the module docstring).

    What was read is applied once *chunk_updates* are queued or *flush_seconds* after the last
    apply, whichever comes first: with many assets a pass takes seconds, and waiting for its end
    would add that to every update's latency.
    """
    pending: dict[str, list[Update]] = {}
    health: list[Any] = []  #: stream health records of the events queued since the last flush
    size = 0
    flushed = time.monotonic()

    def flush() -> None:
        nonlocal pending, size, flushed
        flushed = time.monotonic()
        records = list(health)
        health.clear()
        combined: list[Update] = []
        for account, updates in pending.items():
            if any(u.source == SNAPSHOT for u in updates):
                # Before apply(): the orders whose snapshot state the store never saw, for the
                # history backfill (UpstoxHistoryBackfillOperator drains the queue).
                store.queue_history_backfill(account, updates)
            combined.extend(u if u.account else msgspec.structs.replace(u, account=account) for u in updates)
        if combined:  # one transaction for every account of the chunk, not one per account
            store.apply(combined, health_records=records)  # the chunk's health rides along
        elif records:
            record_stream_health(store, records)
        marks = {c.key: c.watermark(lookback) for c in cursors if c.dirty}
        if marks:
            store.save_operator_progress_many(marks)
        pending, size = {}, 0

    deadline = time.monotonic() + drain_seconds
    todo: Iterable[Cursor] = cursors
    reread = min(lookback, REREAD_LOOKBACK)
    first = True
    while True:
        fresh: list[Cursor] = []
        for cursor in todo:
            found = 0
            for event in cursor.read(accessors[cursor.asset.name], lookback if first else reread):
                if event.id in cursor.recent or (
                    cursor.mark_dt is not None and event.timestamp < cursor.mark_dt - lookback
                ):
                    if event.id not in cursor.handled:
                        cursor.skipped.add(event.id)
                    continue
                found += 1
                cursor.handled.add(event.id)
                cursor.recent[event.id] = event.timestamp.isoformat()
                for queued, account, conn_id in queue_updates(
                    event, cursor.asset, pending, cursor.counts, cursor.refusals, health
                ):
                    size += queued
                    conn = conn_id or cursor.conn_id
                    if conn and cursor.conns.get(account) != conn:
                        cursor.conns[account] = conn
                    if account not in cursor.snapshots and any(
                        u.source == SNAPSHOT for u in pending[account][-queued:]
                    ):
                        cursor.snapshots.add(account)
                cursor.last = event
                cursor.dirty = True
                if size >= chunk_updates:
                    flush()
            if size and time.monotonic() - flushed >= flush_seconds:
                flush()
            if found:
                fresh.append(cursor)
        flush()
        if not fresh or time.monotonic() >= deadline:
            break
        todo, first = fresh, False
    for cursor in cursors:
        cursor.counts["events"], cursor.counts["skipped"] = len(cursor.handled), len(cursor.skipped)
        cursor.counts["read_ms"] = round(cursor.read_s * 1000)
        if cursor.last is not None:
            cursor.counts["watermark_event_id"] = cursor.last.id
