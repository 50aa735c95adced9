"""Renew every Upstox access token before the market opens: one tap on the phone per account.

Each Upstox access token dies at 03:30 India time (``docs/PROTOCOL.md`` §6) and there is no refresh
token. At 08:00 India time on weekdays this DAG asks Upstox, for each configured connection, to
prompt the account's owner (Upstox app and WhatsApp); the owner approves, Upstox POSTs the token to
the provider plugin's notifier webhook, the plugin checks it and writes it into the connection, and
the task (deferred meanwhile, no worker slot held) succeeds. A rejected or unanswered request fails
that account's task only, with a message saying what to do; a login from *Admin > Upstox tokens*
works at any time.

Connections: ``UPSTOX_TOKEN_RENEWAL_CONN_IDS`` (comma separated) if set, otherwise the same list as
the other example DAGs (``UPSTOX_CONN_IDS`` / Variable ``upstox_conn_ids`` / ``upstox_default``).
Each needs the app's ``client_id`` and ``client_secret`` and the expected ``user_id`` in its extra,
and the app's notifier URL (shown on the plugin page) set in the Upstox developer console.
Exchange holidays are not known here: a request on a holiday is harmless (ignore it, or pause the
DAG). ``UPSTOX_TOKEN_RENEWAL_CRON`` changes the time (India time).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, CronTriggerTimetable

from airflow_provider_upstox.assets import configured_conn_ids, parse_conn_ids
from airflow_provider_upstox.operators.token_renewal import UpstoxTokenRenewalOperator

CONN_IDS = (
    parse_conn_ids(os.environ["UPSTOX_TOKEN_RENEWAL_CONN_IDS"])
    if os.environ.get("UPSTOX_TOKEN_RENEWAL_CONN_IDS", "").strip()
    else configured_conn_ids()
)
CRON = os.environ.get("UPSTOX_TOKEN_RENEWAL_CRON", "").strip() or "0 8 * * 1-5"

with DAG(
    dag_id="upstox_token_renewal",
    description="Request a new Upstox access token per account before market open (approve on the phone)",
    schedule=CronTriggerTimetable(CRON, timezone="Asia/Kolkata"),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["upstox"],
    doc_md=__doc__,
):
    for conn_id in CONN_IDS:
        UpstoxTokenRenewalOperator(task_id=f"renew__{conn_id}", upstox_conn_id=conn_id, retries=0)
