"""``UpstoxHistoryBackfillOperator``: read the queued orders' histories and the day's fills, as a task.

The stream operator runs the history backfill itself, a time slice after each batch
(:mod:`airflow_provider_upstox.backfill`). The event-driven path (AssetWatcher + persist task) has
no long-running task to do it: its persist task only *queues* the orders whose snapshot state the
store never saw (a database write), and this task, run after it, drains the queue from the
database within the account's rate budget. Its queue and progress are in the database, so a run
cut short by ``time_limit`` or a failure is continued by the next run.

With ``upstox_conn_ids`` one task serves a group of accounts, one after the other within one
``time_limit``; the events DAG maps it over groups of only the accounts that have work (issue 18:
a static task per account was a task process per account per run, a thousand for a thousand
accounts, nearly all finding nothing to do). In that mode the day's trade book is read only for
the accounts whose *trade book due* record (:func:`trade_book_due_key`, set by the persist task
when a batch carried snapshot rows, i.e. after a (re)connect) says so, and the record is cleared
once read: a group cut short by its time limit leaves the rest due for the next run.

A token Upstox refused (it dies at 03:30 India time) is not a failure of the backfill: the stream
of that account waits for a new token and says so once (``docs/PROTOCOL.md`` §6). The task keeps
the refused token's fingerprint (:func:`refused_token_key`, never the token) and makes no call for
that account until its connection holds another token; the queue stays in the database meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_upstox.operators._db import open_store

log = logging.getLogger(__name__)


def trade_book_due_key(conn_id: str) -> str:
    """The operator progress record saying the account of *conn_id* must read its trade book."""
    return f"trade_book_due:{conn_id}"


def refused_token_key(conn_id: str) -> str:
    """The operator progress record holding the fingerprint of *conn_id*'s token Upstox refused."""
    return f"backfill_refused_token:{conn_id}"


class UpstoxHistoryBackfillOperator(BaseOperator):
    """Record the missing history steps of queued orders and the fills of the day.

    :param upstox_conn_id: the ``upstox`` connection whose account is backfilled.
    :param upstox_conn_ids: instead, a group of connections served one after the other (see the
        module docstring); the task fails at the end if any of them failed, after the others ran.
    :param sql_conn_id: the store's SQL connection.
    :param time_limit: stop after about this many seconds (what is left stays queued).
    :param trade_book: also read the day's trade book (every fill of the day).
    """

    template_fields: Sequence[str] = ("sql_conn_id",)
    ui_color = "#825a2d"

    def __init__(
        self,
        *,
        upstox_conn_id: str = "upstox_default",
        upstox_conn_ids: Sequence[str] | None = None,
        sql_conn_id: str = "upstox_db",
        time_limit: float = 60.0,
        trade_book: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.upstox_conn_id = upstox_conn_id
        self.upstox_conn_ids = None if upstox_conn_ids is None else list(upstox_conn_ids)
        self.sql_conn_id = sql_conn_id
        self.time_limit = time_limit
        self.trade_book = trade_book

    def execute(self, context: Any) -> dict[str, Any]:
        store = open_store(self.sql_conn_id)
        if self.upstox_conn_ids is None:
            return self._backfill(store, self.upstox_conn_id, self.time_limit, self.trade_book)
        keys = {conn_id: trade_book_due_key(conn_id) for conn_id in self.upstox_conn_ids}
        due = store.load_operator_progress_many(list(keys.values()))
        deadline = time.monotonic() + self.time_limit
        results: dict[str, Any] = {}
        failed: list[str] = []
        for conn_id in self.upstox_conn_ids:
            left = deadline - time.monotonic()
            if left <= 0:
                log.info("Time limit reached; %s left for the next run", conn_id)
                continue
            trade_book = self.trade_book and bool(due.get(keys[conn_id], {}).get("due"))
            try:
                result = self._backfill(store, conn_id, left, trade_book)
            except Exception:  # one account's failure must not keep the others from their backfill
                log.exception("History backfill of %s failed", conn_id)
                failed.append(conn_id)
                continue
            if result["trade_book_read"]:
                store.save_operator_progress(keys[conn_id], {"due": False})
            results[conn_id] = result
        if failed:
            raise RuntimeError(f"history backfill failed for {', '.join(failed)} (the others ran)")
        return results

    @staticmethod
    def _backfill(store: Any, conn_id: str, time_limit: float, trade_book: bool) -> dict[str, Any]:
        from airflow_provider_upstox.backfill import BackfillResult, run_backfill, unless_token_refused
        from airflow_provider_upstox.hooks.upstox import UpstoxHook

        hook = UpstoxHook(upstox_conn_id=conn_id)
        account = ""

        def backfill() -> BackfillResult:
            nonlocal account
            account = str(hook.get_account_id())
            with hook.get_conn() as client:
                return run_backfill(store, client, account, time_limit=time_limit, trade_book=trade_book)

        record = store.load_operator_progress(refused_token_key(conn_id)) or {}
        result, refused = unless_token_refused(record.get("fingerprint"), hook.token_fingerprint, backfill)
        if refused != record.get("fingerprint"):
            store.save_operator_progress(
                refused_token_key(conn_id), {"fingerprint": refused} if refused else {}
            )
        if result is None:
            log.info("%s: no backfill call with the token Upstox refused; waiting for a new one", conn_id)
            return {"token_refused": True, "trade_book_read": False}
        return {
            "account": account,
            "orders": result.orders,
            "states_added": result.states_added,
            "trades_added": result.trades_added,
            "failed": result.failed,
            "calls": result.calls,
            "pending": result.pending,
            "stopped": result.stopped,
            "trade_book_read": result.trade_book_read,
        }
