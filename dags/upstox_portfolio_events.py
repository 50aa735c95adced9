"""Event-driven ingestion of Upstox portfolios: an ``AssetWatcher`` per Upstox connection.

The triggerer runs one :class:`UpstoxPortfolioStreamTrigger` per connection for as long as this DAG
exists; each batch becomes an event of the asset ``upstox_events__<conn_id>`` and this DAG, scheduled
on any of them, persists every event after the watermark kept in the store (not only the events
that triggered the run: see :mod:`airflow_provider_upstox.operators.asset_events`). ``max_active_runs=1``
keeps one writer per watermark; an extra run is harmless anyway, the store is idempotent.

A run also starts every few minutes (``UPSTOX_EVENTS_CATCHUP_CRON``, default every 5 minutes; ``off``
disables it): Airflow has left events that arrived while a run was active waiting until a later
event came (apache/airflow#56050). Each run reads again until nothing new arrives, so only an event
committed in the last moments of a run can be left behind, and the time schedule bounds its wait.

After the persist task, ``backfill_history`` reads the history of the orders the persist task
queued and, after each (re)connect, the day's fills (``UpstoxHistoryBackfillOperator``). It is
mapped over groups of only the connections that have such work (the persist task's return
value, 25 per group; its counts are in its XCom ``counts``): usually none, and it is skipped.
Until issue 18 it was one static ``backfill_history__<conn_id>`` task per connection, a task
process per account in every run (a thousand for a thousand accounts), nearly all of them
finding nothing to do.

Many accounts: ``UPSTOX_WATCH_GROUP_SIZE=50`` streams the accounts in groups of 50, one watcher and
one asset (``upstox_events_group__g<k>``) per group, instead of one per account (see
``airflow_provider_upstox.triggers.portfolio_group`` and the README's issue 18 figures).

Connections and store: as in ``upstox_portfolio_stream`` (``UPSTOX_CONN_IDS``, ``UPSTOX_SQL_CONN_ID``).
Run either this DAG or the stream DAG for an account, not both: both would work, twice the load.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable

from airflow_provider_upstox.assets import (
    configured_conn_ids,
    configured_float,
    configured_group_size,
    configured_sql_conn_id,
    watched_assets,
)
from airflow_provider_upstox.operators.asset_events import UpstoxPersistAssetEventsOperator
from airflow_provider_upstox.operators.history_backfill import UpstoxHistoryBackfillOperator

WATCHED = watched_assets(
    configured_conn_ids(),
    configured_group_size(),
    max_batch_wait=configured_float("UPSTOX_MAX_BATCH_WAIT", 1.0),
)
CATCHUP_CRON = os.environ.get("UPSTOX_EVENTS_CATCHUP_CRON", "").strip() or "*/5 * * * *"
SCHEDULE = (
    AssetAny(*WATCHED)
    if CATCHUP_CRON.lower() == "off"
    else AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(CATCHUP_CRON, timezone="Asia/Kolkata"), assets=AssetAny(*WATCHED)
    )
)

with DAG(
    dag_id="upstox_portfolio_events",
    description="Persist Upstox portfolio updates delivered as asset events by an AssetWatcher",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["upstox"],
    default_args={"retries": 3, "retry_delay": timedelta(seconds=10)},
    doc_md=__doc__,
):
    persist = UpstoxPersistAssetEventsOperator(
        task_id="persist_events",
        assets=WATCHED,
        sql_conn_id=configured_sql_conn_id(),
        return_backfill_groups=True,
    )
    # The persist task queues the orders whose snapshot state was never seen and marks the trade
    # book due after a (re)connect; one mapped task per group of the accounts with such work reads
    # their history and the day's fills (the queue and the marks are in the store).
    # A 20 s slice: while a reconnect's backlog is read, the next persist run (max_active_runs=1)
    # waits for this task; what is left stays queued for the next run.
    UpstoxHistoryBackfillOperator.partial(
        task_id="backfill_history",
        sql_conn_id=configured_sql_conn_id(),
        time_limit=20.0,
    ).expand(upstox_conn_ids=persist.output)
