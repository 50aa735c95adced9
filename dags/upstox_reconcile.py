"""Reconcile the Upstox portfolio store with REST snapshots, per connection.

Scheduled when the stream DAG reports new data (any ``upstox_<kind>__<conn_id>`` asset event) and,
regardless of that, at 15:45 India time on weekdays, after market close. Each run records itself
in ``upstox_reconciliation_runs`` and each difference in ``upstox_reconciliation_discrepancies``.

Conf / params: ``repair`` (apply the snapshot rows of differing keys), ``on_discrepancy``
(``fail``, ``warn`` or ``ignore``). While the market is open the store and a snapshot legitimately
differ for a moment, hence ``warn`` by default; after close, ``fail`` is the useful setting.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, Param

from airflow_provider_upstox.assets import configured_conn_ids, configured_sql_conn_id, portfolio_assets
from airflow_provider_upstox.operators.reconcile import UpstoxReconcileOperator

CONN_IDS = configured_conn_ids()

with DAG(
    dag_id="upstox_reconcile",
    description="Compare the Upstox portfolio store with REST snapshots; record and repair differences",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("45 15 * * 1-5", timezone="Asia/Kolkata"),
        assets=AssetAny(*(asset for conn_id in CONN_IDS for asset in portfolio_assets(conn_id))),
    ),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["upstox"],
    params={
        "repair": Param(False, type="boolean", description="repair differences from the snapshot"),
        "on_discrepancy": Param("warn", enum=["fail", "warn", "ignore"]),
    },
    doc_md=__doc__,
):
    for conn_id in CONN_IDS:
        UpstoxReconcileOperator(
            task_id=f"reconcile__{conn_id}",
            upstox_conn_id=conn_id,
            sql_conn_id=configured_sql_conn_id(),
            repair="{{ params.repair }}",
            on_discrepancy="{{ params.on_discrepancy }}",
        )
