"""History backfill: the steps and fills of orders that changed while nobody was listening.

The stream has no replay (``docs/PROTOCOL.md`` §2): an order that went *open -> partially filled ->
complete* while the socket was down reaches the store as just *complete* through the snapshot on
reconnect. Upstox keeps every step of the trading day (``GET /v2/order/history``) and every fill
(``GET /v2/order/trades``, ``GET /v2/order/trades/get-trades-for-day``; §8). This module reads them
for the orders the store queued (:meth:`PortfolioStore.queue_history_backfill`, called with each
batch that carries snapshot rows) and records what is missing through the store's one idempotent
write path, each step marked ``source="history"``.

Where it runs, and why: not in the triggerer (it must not write to the database, and a trigger
event must stay small), but on the consumer side, after a batch is committed, by
:func:`run_backfill` with a time slice (the stream operator) or with no slice (a dedicated task).
The to-do list is in the database, so a backfill cut short by its time slice, a drop, a worker
restart or a failed call goes on at the next call; the stream's own connection keeps reading
meanwhile (a deferred operator's trigger parks it, see ``triggers/handoff.py``).

Budget: every call takes a permit of the account's :class:`~.client.budget.RateBudget` first (by
default 20/s, 200/min, 800/30 min of Upstox's 50/500/2,000), so the stream's reconnects and the
user's other calls keep their headroom. A fill read is skipped for an order whose history shows no
fill. No Airflow import here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_upstox.client.budget import RateBudget, budget_for
from airflow_provider_upstox.exceptions import (
    UpstoxAPIError,
    UpstoxAuthenticationError,
    UpstoxError,
    is_token_refusal,
)
from airflow_provider_upstox.models.updates import HISTORY, ORDER, Update, next_seq, now_us, strip_deprecated

if TYPE_CHECKING:
    from airflow_provider_upstox.store import PortfolioStore

log = logging.getLogger(__name__)


class HistoryReader(Protocol):
    """The three reads a backfill needs (``UpstoxClient`` has them)."""

    def get_order_history(self, order_id: str) -> list[dict[str, Any]]: ...
    def get_order_trades(self, order_id: str) -> list[dict[str, Any]]: ...
    def get_trades(self) -> list[dict[str, Any]]: ...


@dataclass
class BackfillResult:
    """What one :func:`run_backfill` call did."""

    orders: int = 0  #: orders whose history was read and recorded
    states_added: int = 0  #: steps the store was missing
    trades_added: int = 0  #: fills the store was missing
    failed: int = 0  #: orders whose read failed (they stay queued)
    calls: int = 0  #: Upstox requests made
    pending: int = 0  #: orders still queued afterwards
    trade_book_read: bool = False  #: the day's trade book was read and recorded
    #: "done", "time" (slice used up), "budget" (rate budget exhausted) or "failed" (reads failed)
    stopped: str = "done"
    errors: list[str] = field(default_factory=list)


def history_updates(
    steps: list[dict[str, Any]], account: str, order_id: str, received_us: int
) -> list[Update]:
    """The steps of one order's history as updates (oldest first, as Upstox lists them).

    Every step is stamped with the time the request began (like a snapshot row, ``docs/PROTOCOL.md``
    §4), so a live state received after that wins an otherwise equal tie. Steps of another order
    (Upstox filters by ``order_id``; a foreign step is a server bug) are dropped.
    """
    out = []
    for step in steps:
        if not isinstance(step, dict) or str(step.get("order_id")) != order_id:
            log.warning("Dropped a history step of %s that belongs to another order", order_id)
            continue
        out.append(
            Update(
                update_type=ORDER,
                data=strip_deprecated(step),
                source=HISTORY,
                seq=next_seq(),
                received_at_us=received_us,
                account=account,
            )
        )
    return out


def _filled(steps: list[dict[str, Any]]) -> bool:
    return any(isinstance(s, dict) and (s.get("filled_quantity") or 0) for s in steps)


def run_backfill(
    store: PortfolioStore,
    reader: HistoryReader,
    account: str,
    *,
    budget: RateBudget | None = None,
    time_limit: float | None = None,
    trade_book: bool = True,
    max_attempts: int = 5,
    clock: Callable[[], float] = time.monotonic,
) -> BackfillResult:
    """Read the queued orders' histories and fills of *account* and record what the store lacks.

    :param budget: the rate budget (default: the account's process-wide backfill share).
    :param time_limit: stop after about this many seconds (``None``: until the queue is empty);
        what is left stays queued for the next call.
    :param trade_book: read the day's trade book first (one call: every fill of the day, including
        those of orders the stream saw whole; pass ``True`` after each snapshot).
    :param max_attempts: an order whose reads failed this often is left aside (its entry keeps the
        last error, for the reconciliation to report).
    :raises UpstoxAuthenticationError: the token was refused: nothing more can be read.
    """
    budget = budget or budget_for(account)
    started = clock()
    result = BackfillResult()

    def permit() -> bool:
        left = float("inf") if time_limit is None else time_limit - (clock() - started)
        if left <= 0:
            result.stopped = "time"
            return False
        if not budget.acquire(max_wait=left):
            result.stopped = "budget" if time_limit is None or clock() - started < time_limit else "time"
            return False
        result.calls += 1
        return True

    if trade_book:
        if not permit():
            return _finish(store, account, result)
        received = datetime.now(timezone.utc)
        written = store.record_trade_book(account, reader.get_trades(), received)
        result.trades_added += written.inserted
        result.trade_book_read = True
    tried: set[str] = set()  # a failed order waits for the next call, not for this loop to spin
    while True:
        queued = [
            o
            for o in store.pending_history_backfill(account, limit=50 + len(tried), max_attempts=max_attempts)
            if o not in tried
        ]
        if not queued:
            break
        for order_id in queued:
            tried.add(order_id)
            if not permit():
                return _finish(store, account, result)
            received_us = now_us()
            try:
                steps = reader.get_order_history(order_id)
                fills: list[dict[str, Any]] = []
                if _filled(steps):
                    if not permit():
                        return _finish(store, account, result)
                    fills = reader.get_order_trades(order_id)
            except UpstoxAuthenticationError:
                raise
            except (UpstoxAPIError, UpstoxError) as exc:
                result.failed += 1
                result.errors.append(f"{order_id}: {type(exc).__name__}")
                store.history_backfill_failed(account, order_id, f"{type(exc).__name__}: {exc}")
                log.warning("Could not read the history of order %s of %s: %s", order_id, account, exc)
                continue
            updates = history_updates(steps, account, order_id, received_us)
            received = datetime.fromtimestamp(received_us / 1e6, tz=timezone.utc)
            added, fills_added = store.record_order_history(account, order_id, updates, fills, received)
            result.orders += 1
            result.states_added += added
            result.trades_added += fills_added
    return _finish(store, account, result)


def unless_token_refused(
    refused: str | None,
    fingerprint: Callable[[], str | None],
    backfill: Callable[[], BackfillResult],
) -> tuple[BackfillResult | None, str | None]:
    """Run *backfill* unless the connection still holds the token Upstox last refused.

    Every access token dies at 03:30 India time, and a backfill that called Upstox with it on each
    run would only collect refusals, each counted against the account's rate limits. So the caller
    keeps the refused token's fingerprint (never the token: the stream operator in its progress, the
    backfill task in a store record) and no call is made until the connection holds another token.
    The queue waits in the store meanwhile.

    :param refused: fingerprint of the token Upstox refused last (``None``: none).
    :param fingerprint: reads the connection's token fingerprint now (only called when needed).
    :returns: ``(result, None)`` after a backfill ran; ``(None, fingerprint to keep)`` when the
        token is, or still is, refused.
    :raises UpstoxError: any failure other than a refused token (the caller decides).
    """
    if refused is not None and fingerprint() == refused:
        return None, refused
    try:
        return backfill(), None
    except UpstoxError as exc:
        if not is_token_refusal(exc):
            raise
        log.warning("Upstox refused the token (%s); history backfill paused until it changes", exc)
        return None, fingerprint()


def _finish(store: PortfolioStore, account: str, result: BackfillResult) -> BackfillResult:
    result.pending = store.history_backfill_counts(account)["pending"]
    if result.pending == 0:
        result.stopped = "done"
    elif result.stopped == "done":
        result.stopped = "failed"  # what is left failed in this call; the next call tries again
    log.info(
        "History backfill of %s: %d orders, %d missing states and %d missing fills recorded, %d failed, "
        "%d calls, %d still queued (%s)",
        account,
        result.orders,
        result.states_added,
        result.trades_added,
        result.failed,
        result.calls,
        result.pending,
        result.stopped,
    )
    return result
