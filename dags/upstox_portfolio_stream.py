"""Continuous ingestion of Upstox portfolios: one deferrable stream task per Upstox connection.

Which connections: ``UPSTOX_CONN_IDS`` (comma separated; else the Variable ``upstox_conn_ids``;
else ``upstox_default``). The store: the SQL connection ``UPSTOX_SQL_CONN_ID`` (default
``upstox_db``). Each run streams until ``stop_at`` (India time, default market close 15:30, or
``UPSTOX_STOP_AT``: e.g. ``23:30`` for MCX commodity sessions, ``off`` for none),
``stop_after_idle_seconds`` without updates, or ``max_batches`` batches, whichever comes first; a
new run starts right away (``@continuous``). Set any of them in the run's conf::

    airflow dags trigger upstox_portfolio_stream --conf '{"max_batches": 20, "stop_at": null}'

When a run's task stops it emits ``upstox_<kind>__<conn_id>`` asset events for the kinds it wrote;
``upstox_reconcile`` is scheduled on them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from airflow_provider_upstox.assets import (
    configured_conn_ids,
    configured_float,
    configured_sql_conn_id,
    configured_stop_at,
)
from airflow_provider_upstox.operators.portfolio_stream import UpstoxPortfolioStreamOperator

with DAG(
    dag_id="upstox_portfolio_stream",
    description="Stream Upstox orders, positions, holdings and GTT orders into the SQL store",
    schedule="@continuous",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["upstox"],
    # Airflow 3 reads retry_exponential_backoff as a multiplier (True would be 1: no backoff):
    # retries after 30-60 s, 60-120 s, 120-240 s.
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=5),
    },
    params={
        "stop_after_idle_seconds": Param(
            None,
            type=["null", "number"],
            minimum=0,
            description="stop after this many seconds without updates",
        ),
        "max_batches": Param(
            None, type=["null", "integer"], minimum=1, description="stop after this many persisted batches"
        ),
        "stop_at": Param(
            configured_stop_at(),
            type=["null", "string"],
            description="time of day in Asia/Kolkata at which to stop (HH:MM)",
        ),
    },
    doc_md=__doc__,
):
    for conn_id in configured_conn_ids():
        UpstoxPortfolioStreamOperator(
            task_id=f"stream__{conn_id}",
            upstox_conn_id=conn_id,
            sql_conn_id=configured_sql_conn_id(),
            max_batch_wait=configured_float("UPSTOX_MAX_BATCH_WAIT", 1.0),
            stop_after_idle="{{ params.stop_after_idle_seconds }}",
            max_batches="{{ params.max_batches }}",
            stop_at="{{ params.stop_at }}",
        )
