"""The history backfill's to-do list (``upstox_backfill_queue``) and the reads it decides with.

After every (re)connect the stream client's snapshot says what each order looks like *now*. An
order whose snapshot state the store has never recorded (its state id is not among the order's
``upstox_order_events`` rows) went through steps nobody saw: it is queued here, in the database,
so that a backfill interrupted by a drop, a worker restart or a failed call resumes where it
stopped instead of being forgotten with a process's memory. :mod:`airflow_provider_upstox.backfill`
drains the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import ORDER, SNAPSHOT, Update
from airflow_provider_upstox.store import rows, schema, upsert

log = logging.getLogger(__name__)

#: ``upstox_backfill_queue.reason``.
UNSEEN: Final = "unseen"  # the store has no row for the order
CHANGED: Final = "changed"  # the snapshot's state is one the store never recorded
_CHUNK: Final = 500
_ERROR_LEN: Final = schema.backfill_queue.c.last_error.type.length  # type: ignore[attr-defined]


def state_id_of(update: Update, account: str, now: datetime) -> str | None:
    """The ``upstox_order_events`` key of an order update's state, or ``None`` if it is invalid
    (the store will reject it on its own; nothing to backfill for it)."""
    try:
        return rows.prepare(update, account, now, 1).state_id
    except (InvalidUpdateError, ValueError):
        return None


def known_states(conn: Connection, account: str, order_ids: Sequence[str]) -> dict[str, set[str]]:
    """The recorded state ids of each order of *order_ids* (orders without any are absent)."""
    ev = schema.order_events
    found: dict[str, set[str]] = {}
    ids = sorted(set(order_ids))
    for start in range(0, len(ids), _CHUNK):
        query = sa.select(ev.c.order_id, ev.c.state_id).where(
            ev.c.account == account, ev.c.order_id.in_(ids[start : start + _CHUNK])
        )
        for order_id, state_id in conn.execute(query):
            found.setdefault(order_id, set()).add(state_id)
    return found


def gaps(conn: Connection, account: str, updates: Iterable[Update], now: datetime) -> dict[str, str]:
    """Orders of the snapshot rows among *updates* whose state the store never recorded, with why.

    Only ``source == "snapshot"`` order rows count: a live message is itself the state it shows.
    """
    snapshot: dict[str, str] = {}
    for update in updates:
        if update.update_type != ORDER or update.source != SNAPSHOT:
            continue
        order_account = rows.resolve_account(update, account)
        state_id = state_id_of(update, account, now) if order_account == account else None
        order_id = update.key
        if state_id is not None and order_id is not None:
            snapshot[order_id] = state_id
    if not snapshot:
        return {}
    known = known_states(conn, account, list(snapshot))
    return {
        order_id: (UNSEEN if order_id not in known else CHANGED)
        for order_id, state_id in sorted(snapshot.items())
        if state_id not in known.get(order_id, ())
    }


def enqueue(conn: Connection, account: str, orders: dict[str, str], now: datetime) -> None:
    """Queue each order of *orders* (order id -> reason), or re-open its finished entry."""
    if not orders:
        return
    params = [
        {"account": account, "order_id": order_id, "reason": reason, "queued_at": now, "attempts": 0}
        for order_id, reason in sorted(orders.items())
    ]
    conn.execute(upsert.backfill_enqueue(conn.dialect.name), params)


def pending(conn: Connection, account: str, limit: int, max_attempts: int) -> list[str]:
    """Up to *limit* queued order ids of *account*, least tried and oldest first."""
    q = schema.backfill_queue
    query = (
        sa.select(q.c.order_id)
        .where(q.c.account == account, q.c.done_at.is_(None), q.c.attempts < max_attempts)
        .order_by(q.c.attempts, q.c.queued_at, q.c.order_id)
        .limit(limit)
    )
    return list(conn.execute(query).scalars())


def accounts_pending(conn: Connection, max_attempts: int) -> list[str]:
    """The accounts with at least one queued order id (one query, whatever the number of accounts)."""
    q = schema.backfill_queue
    query = (
        sa.select(q.c.account)
        .where(q.c.done_at.is_(None), q.c.attempts < max_attempts)
        .distinct()
        .order_by(q.c.account)
    )
    return list(conn.execute(query).scalars())


def finish(
    conn: Connection, account: str, order_id: str, states_added: int, trades_added: int, now: datetime
) -> None:
    """Mark the history of *order_id* as read (and what it added)."""
    q = schema.backfill_queue
    conn.execute(
        q.update()
        .where(q.c.account == account, q.c.order_id == order_id)
        .values(done_at=now, states_added=states_added, trades_added=trades_added, last_error=None)
    )


def failed(conn: Connection, account: str, order_id: str, error: str) -> None:
    """Count a failed attempt at *order_id* (it stays queued until ``max_attempts``)."""
    q = schema.backfill_queue
    conn.execute(
        q.update()
        .where(q.c.account == account, q.c.order_id == order_id)
        .values(attempts=q.c.attempts + 1, last_error=error[:_ERROR_LEN])
    )


def queue_counts(conn: Connection, account: str) -> dict[str, int]:
    """``{"pending": n, "done": n, "failing": n}`` of *account*'s queue (for logs and figures)."""
    q = schema.backfill_queue

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:  # no FILTER on MySQL
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    query = sa.select(
        count(q.c.done_at.is_(None)),
        count(q.c.done_at.is_not(None)),
        count(sa.and_(q.c.done_at.is_(None), q.c.last_error.is_not(None))),
    ).where(q.c.account == account)
    pending_n, done_n, failing_n = conn.execute(query).one()
    return {"pending": int(pending_n), "done": int(done_n), "failing": int(failing_n)}
