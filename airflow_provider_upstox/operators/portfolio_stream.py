"""``UpstoxPortfolioStreamOperator``: a deferrable task that keeps the portfolio store up to date.

Life of one try::

    execute()  -> record fresh progress in the DB -> defer(UpstoxPortfolioStreamTrigger)
    execute_complete(event) -> decode the event (models/events.py) -> persist a batch through the
                               store -> record progress -> stop (emit asset events) or defer again

Progress (batches, rows per kind, last event time, idle start, the ``stop_at`` deadline) is kept in
the database, keyed by dag/task/run/map index: task-sdk 1.3.2 drops ``defer(kwargs=...)`` under
``dag.test()``, and a database record also survives a worker restart. Every re-deferral creates a
new trigger; the trigger recovers anything missed in between from the REST snapshot it takes on
connect, and the store's ordering rule makes replays harmless.

The progress record also holds ``acked_seq``, the highest update seq committed in this try, saved
after the batch's commit and passed to every re-deferral's trigger: a trigger that takes over a
parked stream re-emits the last batch it yielded unless ``acked_seq`` covers it. A fresh try
(``execute``) passes ``0`` (nothing committed), so a batch whose try died before its commit is
delivered again.

A refused access token (they all die at 03:30 India time) does not fail the task unless
``fail_on_token_refused`` asks for it: the trigger reports a ``TokenWaitEvent``, the operator logs
one warning, counts one metric and calls the ``on_token_refused`` notifier once per refusal episode,
keeps the episode in the progress record and re-defers into a trigger that waits for a new token in
the connection, then reconnects (with the snapshot recovery) by itself
(:mod:`airflow_provider_upstox.triggers.token_wait`).

On a silent market no trigger event comes, so each deferral carries a timeout equal to the time
left before a stop condition could become true; :meth:`resume_execution` turns that timeout into
a wake-up instead of a failure.

Asset events: the outlet is the alias ``upstox_stream__<conn_id>``; when the task stops it emits
one event per kind it persisted during the try (``upstox_orders__<conn_id>``...), with the row
counts, account and time range as ``extra``. See :mod:`airflow_provider_upstox.assets`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.operator import TriggerFailureReason

from airflow_provider_upstox.assets import ASSET_KINDS, portfolio_asset, stream_alias
from airflow_provider_upstox.exceptions import UpstoxAuthenticationError, UpstoxError
from airflow_provider_upstox.market_hours import next_stop_deadline, parse_stop_at
from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    IdleEvent,
    StreamEvent,
    TokenWaitEvent,
    decode_event,
    encode_event,
)
from airflow_provider_upstox.models.updates import (
    ORDER,
    SNAPSHOT,
    STREAM,
    Update,
    normalize_update_types,
    now_us,
)
from airflow_provider_upstox.operators._db import (
    health_records,
    load_progress,
    open_store,
    record_health,
    record_stream_health,
    save_progress,
)
from airflow_provider_upstox.operators.stop_rules import StopRules, StreamProgress, optional_number
from airflow_provider_upstox.store import ApplyResult
from airflow_provider_upstox.store.health import TASK, stopped
from airflow_provider_upstox.triggers.token_wait import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PROBE_INTERVAL,
    note_token_renewed,
    token_wait_from_json,
    warn_token_refused,
)

log = logging.getLogger(__name__)

#: Smallest trigger ``idle_timeout`` the operator derives from ``stop_after_idle`` (seconds).
MIN_IDLE_TIMEOUT = 5.0


class UpstoxPortfolioStreamFatalError(UpstoxAuthenticationError):
    """The trigger reported an error that re-deferring cannot fix (e.g. an expired access token)."""


class UpstoxPortfolioStreamOperator(BaseOperator):
    """Stream an Upstox account's orders, positions, holdings and GTT orders into a SQL database.

    :param upstox_conn_id: the ``upstox`` connection (access token, base URL). Also names the assets,
        so keep it a literal rather than a template.
    :param sql_conn_id: any Airflow SQL connection (SQLite, PostgreSQL, MySQL/MariaDB) for the store.
    :param update_types: kinds to subscribe to (``"order,position"`` or a list); default all four.
    :param max_batch_size: most updates in one trigger event.
    :param max_batch_wait: seconds the trigger waits to fill a batch; bounds the latency.
    :param idle_timeout: seconds of socket silence after which the trigger treats the connection
        as dead and reconnects.
    :param stop_at: time of day in Asia/Kolkata (``"15:30"``) at which to stop; the next such time
        after the try starts.
    :param stop_after_idle: stop after this many seconds without a live stream message (the REST
        snapshot taken on each connect is not activity).
    :param max_batches: stop after persisting this many non-empty batches.
    :param emit_assets: emit asset events for the kinds persisted (needs the default outlet).
    :param fail_on_token_refused: fail the task when Upstox refuses the access token (the behaviour
        before the stream learned to wait). Default ``False``: wait for a new token in the
        connection and resume by itself.
    :param on_token_refused: an Airflow notifier (``BaseNotifier``) or any callable taking the
        context, called once per refusal episode; the context also holds ``upstox_token_refused``
        (connection id, account, since, the refusal's text: no secret). Its failure is logged, not
        raised.
    :param token_poll_interval: seconds between re-reads of the connection while waiting for a new
        token (a new token is picked up within this plus one connect).
    :param token_probe_interval: least seconds between two calls to Upstox with a refused token
        (default 15 minutes).
    :param backfill_history: after a batch with snapshot rows (every reconnect), queue the orders
        whose snapshot state the store never saw and read their history and fills (see
        :mod:`airflow_provider_upstox.backfill`); the to-do list is in the database.
    :param backfill_time_slice: most seconds of backfill per wake-up (the trigger's parked stream
        keeps reading meanwhile); what is left is read at the next wake-ups.
    :param trade_book_interval: the day's trade book (every fill, with its trade id) is read after
        each snapshot, and at most this often (seconds) after live order updates showed new fills.
    """

    template_fields: Sequence[str] = (
        "sql_conn_id",
        "update_types",
        "max_batch_size",
        "max_batch_wait",
        "idle_timeout",
        "stop_at",
        "stop_after_idle",
        "max_batches",
    )
    ui_color = "#5a2d82"

    def __init__(
        self,
        *,
        upstox_conn_id: str = "upstox_default",
        sql_conn_id: str = "upstox_db",
        update_types: str | Sequence[str] | None = None,
        max_batch_size: int | str = 500,
        max_batch_wait: float | str = 1.0,
        idle_timeout: float | str = 60.0,
        stop_at: str | None = None,
        stop_after_idle: float | str | None = None,
        max_batches: int | str | None = None,
        emit_assets: bool = True,
        fail_on_token_refused: bool = False,
        on_token_refused: Callable[[Any], Any] | None = None,
        token_poll_interval: float = DEFAULT_POLL_INTERVAL,
        token_probe_interval: float = DEFAULT_PROBE_INTERVAL,
        backfill_history: bool = True,
        backfill_time_slice: float = 5.0,
        trade_book_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        if emit_assets and "outlets" not in kwargs:
            kwargs["outlets"] = [stream_alias(upstox_conn_id)]
        super().__init__(**kwargs)
        self.upstox_conn_id = upstox_conn_id
        self.sql_conn_id = sql_conn_id
        self.update_types = update_types
        self.max_batch_size = max_batch_size
        self.max_batch_wait = max_batch_wait
        self.idle_timeout = idle_timeout
        self.stop_at = stop_at
        self.stop_after_idle = stop_after_idle
        self.max_batches = max_batches
        self.emit_assets = emit_assets
        self.fail_on_token_refused = fail_on_token_refused
        self.on_token_refused = on_token_refused
        if token_poll_interval <= 0 or token_probe_interval <= 0:
            raise ValueError("token_poll_interval and token_probe_interval must be positive")
        self.token_poll_interval = float(token_poll_interval)
        self.token_probe_interval = float(token_probe_interval)
        self.backfill_history = backfill_history
        self.backfill_time_slice = backfill_time_slice
        self.trade_book_interval = trade_book_interval
        # Fail at parse time for literal values; templated ones are checked again after rendering.
        if not _is_template(update_types):
            normalize_update_types(update_types)
        if not _is_template(stop_at):
            parse_stop_at(stop_at)

    # ---------------------------------------------------------------- settings after rendering
    def _rules(self) -> StopRules:
        batches = optional_number(self.max_batches, "max_batches", integer=True)
        return StopRules(
            max_batches=None if batches is None else int(batches),
            stop_after_idle=optional_number(self.stop_after_idle, "stop_after_idle"),
        )

    def _progress_key(self, context: Any) -> str:
        ti = context["ti"]
        return f"stream:{ti.dag_id}/{ti.task_id}/{ti.run_id}/{ti.map_index}"

    def _trigger(self, rules: StopRules, progress: StreamProgress) -> Any:
        from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

        idle_timeout = float(optional_number(self.idle_timeout, "idle_timeout") or 60.0)
        if rules.stop_after_idle is not None:
            # The trigger's idle event is what wakes the task when nothing happens (under dag.test
            # deferral timeouts are not enforced), so it must not wait longer than the idle stop.
            idle_timeout = min(idle_timeout, max(MIN_IDLE_TIMEOUT, rules.stop_after_idle))
        return UpstoxPortfolioStreamTrigger(
            upstox_conn_id=self.upstox_conn_id,
            update_types=list(normalize_update_types(self.update_types)),
            max_batch_size=int(optional_number(self.max_batch_size, "max_batch_size", integer=True) or 500),
            max_batch_wait=float(optional_number(self.max_batch_wait, "max_batch_wait") or 1.0),
            idle_timeout=idle_timeout,
            acked_seq=progress.acked_seq,
            token_wait=progress.token_wait,
            token_poll_interval=self.token_poll_interval,
            token_probe_interval=self.token_probe_interval,
        )

    def _defer(self, progress: StreamProgress, rules: StopRules) -> None:
        wait = rules.wake_after(progress, now_us())
        self.defer(
            trigger=self._trigger(rules, progress),
            method_name="execute_complete",
            timeout=None if wait is None else timedelta(seconds=wait),
        )

    # ---------------------------------------------------------------- entry points
    def execute(self, context: Any) -> dict[str, Any] | None:
        """Start a try: fresh progress record, then defer to the trigger."""
        rules = self._rules()
        stop_at = parse_stop_at(self.stop_at)
        now = datetime.now(timezone.utc)
        store = open_store(self.sql_conn_id)
        progress = StreamProgress(
            started_at_us=now_us(),
            idle_since_us=now_us(),
            deadline_us=None if stop_at is None else int(next_stop_deadline(stop_at, now).timestamp() * 1e6),
        )
        save_progress(store, self._progress_key(context), progress.to_json())
        log.info(
            "Streaming %s into %s (update types %s; stop: max_batches=%s, stop_after_idle=%s, stop_at=%s)",
            self.upstox_conn_id,
            self.sql_conn_id,
            ",".join(normalize_update_types(self.update_types)),
            rules.max_batches,
            rules.stop_after_idle,
            stop_at,
        )
        self._defer(progress, rules)  # acked_seq 0: nothing of an earlier try is known to be committed
        return None  # not reached: defer() raises

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """Treat the deferral timeout we set as a wake-up to check the stop conditions, not a failure."""
        if (
            next_method == "__fail__"
            and (next_kwargs or {}).get("error") == TriggerFailureReason.TRIGGER_TIMEOUT
        ):
            return self._step(context, None)
        return super().resume_execution(next_method, next_kwargs, context)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Persist one trigger event, record progress, then stop or defer again.

        :raises InvalidEventError: *event* is not a payload of the portfolio stream trigger.
        """
        return self._step(context, None if event is None else decode_event(event))

    def _step(self, context: Any, event: StreamEvent | None) -> dict[str, Any] | None:
        """One wake-up: *event* from the trigger, or ``None`` when the deferral timeout woke us."""
        rules = self._rules()
        store = open_store(self.sql_conn_id)
        key = self._progress_key(context)
        loaded = load_progress(store, key)
        progress = StreamProgress.from_json(loaded) if loaded else StreamProgress(now_us(), now_us())
        progress.events += 1
        if isinstance(event, (ErrorEvent, TokenWaitEvent)):  # before: handling them may fail the task
            record_health(store, self.upstox_conn_id, event, TASK)
        committed = self._handle_event(context, store, progress, event)
        if isinstance(event, IdleEvent) or (isinstance(event, BatchEvent) and not event.updates):
            record_health(store, self.upstox_conn_id, event, TASK)  # a batch records it in apply()
        if committed is not None:
            progress.acked_seq = max(progress.acked_seq, committed)
        # Saved after the batch's commit, so acked_seq never runs ahead of what is in the store.
        save_progress(store, key, progress.to_json())
        reason = rules.reason_to_stop(progress, now_us())
        if reason is None:
            self._defer(progress, rules)
        record_stream_health(store, [stopped(self.upstox_conn_id, TASK, datetime.now(timezone.utc))])
        log.info(
            "Stopping the stream of %s: %s (%d batches, %d updates)",
            self.upstox_conn_id,
            reason,
            progress.batches,
            progress.updates,
        )
        if self.emit_assets:
            self._emit_assets(context, progress)
        return {
            "reason": reason,
            "account": progress.account,
            "batches": progress.batches,
            "updates": progress.updates,
            "rows_by_type": progress.rows_by_type,
            "applied": progress.applied,
        }

    # ---------------------------------------------------------------- internals
    def _handle_event(
        self, context: Any, store: Any, progress: StreamProgress, event: StreamEvent | None
    ) -> int | None:
        """Persist a batch event (or account for another kind); the highest seq committed, if any."""
        if isinstance(event, TokenWaitEvent):
            self._token_wait(context, progress, event)
            return None
        if isinstance(event, (BatchEvent, IdleEvent)) and progress.token_wait is not None:
            # The trigger only sends these once connected: the refusal episode is over.
            episode = token_wait_from_json(progress.token_wait)
            if episode is not None:
                note_token_renewed(self.upstox_conn_id, episode)
            progress.token_wait = None
        if isinstance(event, BatchEvent):
            return self._persist_batch(store, progress, event)
        if isinstance(event, ErrorEvent):
            progress.errors += 1
            if event.fatal:
                raise UpstoxPortfolioStreamFatalError(
                    f"Upstox stream of connection {self.upstox_conn_id!r} cannot continue "
                    f"({event.kind}): {event.message}. If the access token expired (they expire at "
                    "03:30 India time), generate a new one and update the connection."
                )
            log.warning(
                "Stream error on %s (%s): %s; deferring again", self.upstox_conn_id, event.kind, event.message
            )
        elif isinstance(event, IdleEvent):
            log.debug("No update since %d; checking stop conditions", event.idle_since_us)
        else:
            log.debug("Woken by the deferral timeout; checking stop conditions")
        waiting_for_token = progress.token_wait is not None  # no call with a refused token
        if (
            self.backfill_history
            and progress.account
            and not waiting_for_token
            and not isinstance(event, ErrorEvent)
        ):
            # A quiet market still owes the fills of its last live updates, and any queued history.
            self._backfill(store, progress, progress.account, snapshot=False)
        return None

    def _token_wait(self, context: Any, progress: StreamProgress, event: TokenWaitEvent) -> None:
        """Record the refusal episode; report it (warning, metric, notifier) only when it is new."""
        if self.fail_on_token_refused:
            raise UpstoxPortfolioStreamFatalError(
                f"Upstox refused the access token of connection {self.upstox_conn_id!r} "
                f"(fail_on_token_refused=True): {event.message}"
            )
        if event.account:
            progress.account = event.account
        elif progress.account:  # refused before the profile read told the trigger whose token it was
            event.account = progress.account
        known = token_wait_from_json(progress.token_wait)
        progress.token_wait = encode_event(event)
        if known is not None and known.episode == event.episode:
            log.info(
                "Still waiting for a new access token in %r (since %s, %d probes)",
                self.upstox_conn_id,
                _iso(event.since_us),
                event.probes,
            )
            return
        progress.token_refusals += 1
        warn_token_refused(self.upstox_conn_id, event)
        if self.on_token_refused is not None:
            details = {
                "conn_id": self.upstox_conn_id,
                "account": event.account,
                "since": _iso(event.since_us),
                "message": event.message,
            }
            try:
                self.on_token_refused({**context, "upstox_token_refused": details})
            except Exception:  # a broken notifier must not stop the stream
                log.exception("The on_token_refused notifier of %r failed", self.upstox_conn_id)

    def _persist_batch(self, store: Any, progress: StreamProgress, event: BatchEvent) -> int | None:
        updates = event.updates
        account = event.account or progress.account or _account_of(updates)
        if account is None:
            account = self._lookup_account()
        progress.account = account
        if not updates:
            return None
        snapshot = any(u.source == SNAPSHOT for u in updates)
        if self.backfill_history and snapshot:
            # Before apply(): afterwards the snapshot's states are recorded and no gap shows.
            store.queue_history_backfill(account, updates)
        result: ApplyResult = store.apply(
            updates,
            account=account,
            stream_key=f"conn:{self.upstox_conn_id}",
            health_records=health_records(self.upstox_conn_id, event, TASK),  # same transaction
        )
        now = now_us()
        progress.batches += 1
        progress.updates += len(updates)
        progress.last_event_at_us = now
        if any(u.source == STREAM for u in updates):
            # Idle means "no live message": the snapshot each (re)connect takes is not activity.
            progress.idle_since_us = now
        for update in updates:
            progress.rows_by_type[update.update_type] = progress.rows_by_type.get(update.update_type, 0) + 1
        applied = progress.applied
        for name, count in (
            ("inserted", result.inserted),
            ("updated", result.updated),
            ("ignored", result.ignored),
            ("rejected", result.rejected),
        ):
            applied[name] = applied.get(name, 0) + count
        log.info("Batch %d: %d updates for %s -> %s", progress.batches, len(updates), account, result)
        if self.backfill_history:
            if any(
                u.source != SNAPSHOT and u.update_type == ORDER and u.data.get("filled_quantity")
                for u in updates
            ):
                progress.fills_pending = True
            self._backfill(store, progress, account, snapshot=snapshot)
        return max(u.seq for u in updates)

    def _backfill(self, store: Any, progress: StreamProgress, account: str, *, snapshot: bool) -> None:
        """One time slice of history backfill, after the batch's commit; never fails the task.

        The trade book is read after every snapshot, and at most every ``trade_book_interval``
        seconds while live updates show new fills.
        """
        from airflow_provider_upstox.backfill import BackfillResult, run_backfill, unless_token_refused
        from airflow_provider_upstox.hooks.upstox import UpstoxHook

        now = now_us()
        due = progress.fills_pending and now - progress.trade_book_at_us >= self.trade_book_interval * 1e6
        if not (snapshot or due or store.pending_history_backfill(account, limit=1)):
            return
        hook = UpstoxHook(upstox_conn_id=self.upstox_conn_id)

        def backfill() -> BackfillResult:
            with hook.get_conn() as client:
                return run_backfill(
                    store,
                    client,
                    account,
                    time_limit=float(self.backfill_time_slice),
                    trade_book=snapshot or due,
                )

        try:
            result, progress.backfill_refused_token = unless_token_refused(
                progress.backfill_refused_token, hook.token_fingerprint, backfill
            )
        except UpstoxError as exc:  # the queue is in the database: the next wake-up goes on
            log.warning("History backfill of %s paused: %s", account, exc)
            return
        if result is None:
            return  # no call with a token Upstox refused; the queue waits for the new one
        if result.trade_book_read:
            progress.trade_book_at_us = now
            progress.fills_pending = False

    def _lookup_account(self) -> str:
        from airflow_provider_upstox.hooks.upstox import UpstoxHook

        return str(UpstoxHook(upstox_conn_id=self.upstox_conn_id).get_account_id())

    def _emit_assets(self, context: Any, progress: StreamProgress) -> None:
        alias = stream_alias(self.upstox_conn_id)
        outlet_events = context["outlet_events"]
        for update_type, rows in progress.rows_by_type.items():
            if update_type not in ASSET_KINDS or not rows:
                continue
            outlet_events[alias].add(
                portfolio_asset(self.upstox_conn_id, update_type),
                extra={
                    "account": progress.account,
                    "conn_id": self.upstox_conn_id,
                    "update_type": update_type,
                    "updates": rows,
                    "batches": progress.batches,
                    "started_at_us": progress.started_at_us,
                    "last_event_at_us": progress.last_event_at_us,
                },
            )


def _iso(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1e6, timezone.utc).isoformat(timespec="seconds")


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _account_of(updates: Sequence[Update]) -> str | None:
    for update in updates:
        if update.account:
            return str(update.account)
    return None
