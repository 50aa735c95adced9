"""``UpstoxHistoryBackfillOperator``: read the queued orders' histories and the day's fills, as a task.

The stream operator runs the history backfill itself, a time slice after each batch
(:mod:`airflow_provider_upstox.backfill`). The event-driven path (AssetWatcher + persist task) has
no long-running task to do it: its persist task only *queues* the orders whose snapshot state the
store never saw (a database write), and this task, run after it, drains the queue from the
database within the account's rate budget. Its queue and progress are in the database, so a run
cut short by ``time_limit`` or a failure is continued by the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_upstox.operators._db import open_store

log = logging.getLogger(__name__)


class UpstoxHistoryBackfillOperator(BaseOperator):
    """Record the missing history steps of queued orders and the fills of the day.

    :param upstox_conn_id: the ``upstox`` connection whose account is backfilled.
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
        sql_conn_id: str = "upstox_db",
        time_limit: float = 60.0,
        trade_book: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.upstox_conn_id = upstox_conn_id
        self.sql_conn_id = sql_conn_id
        self.time_limit = time_limit
        self.trade_book = trade_book

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_upstox.backfill import run_backfill
        from airflow_provider_upstox.hooks.upstox import UpstoxHook

        hook = UpstoxHook(upstox_conn_id=self.upstox_conn_id)
        store = open_store(self.sql_conn_id)
        account = str(hook.get_account_id())
        with hook.get_conn() as client:
            result = run_backfill(
                store, client, account, time_limit=self.time_limit, trade_book=self.trade_book
            )
        return {
            "account": account,
            "orders": result.orders,
            "states_added": result.states_added,
            "trades_added": result.trades_added,
            "failed": result.failed,
            "calls": result.calls,
            "pending": result.pending,
            "stopped": result.stopped,
        }
