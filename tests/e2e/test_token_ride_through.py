"""The nightly expiry under a real Airflow: the stream task rides through it, renewed from a "phone".

A real api-server (with the token plugin), scheduler, triggerer and dag-processor run
``upstox_portfolio_stream`` for a connection kept in the metadata database. Mid-session the
simulator expires the token (control API); the task keeps running, deferred, while its trigger waits.
Then the token is renewed the way a user does it from a phone: the access-token request, the
approval in the simulator (playing Upstox), which POSTs the token to the plugin's notifier
endpoint, which writes it into the connection. Nobody touches the DAG or the task: the trigger
picks the token up, reconnects with the snapshot recovery, and the store ends equal to the
simulator's ground truth. Slow: a minute or two.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from airflow_provider_upstox.client import login
from tests.e2e.harness import (
    DAGS_DIR,
    FAST_SCHEDULER_ENV,
    compare_with_simulator,
    sql_connection_json,
    wait_for,
)
from tests.plugins.conftest import APP, configure_app, create_connection, sim_auth, sim_control

pytestmark = [pytest.mark.slow, pytest.mark.airflow_server, pytest.mark.timeout(600)]

STACK = ("dag-processor", "scheduler", "triggerer")
DAG_ID = "upstox_portfolio_stream"
CONN_ID = "upstox_ride"
TASK_ID = f"stream__{CONN_ID}"


def _task_log(http: httpx.Client) -> str:
    """The first try's log of the stream task of the test's one run (empty until it exists)."""
    runs = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json().get("dag_runs", [])
    if not runs:
        return ""
    run_url = f"/api/v2/dags/{DAG_ID}/dagRuns/{runs[0]['dag_run_id']}/taskInstances/{TASK_ID}"
    return http.get(f"{run_url}/logs/1", headers={"Accept": "application/json"}).text


def _order_events(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM upstox_order_events").scalar_one())
    except sa.exc.SQLAlchemyError:
        return 0


@pytest.mark.simulator(scenario="quiet", ping_interval=0.5)
def test_stream_task_rides_through_the_expiry_renewed_through_the_notifier(
    airflow_env: Any, simulator: Any, make_database: Any, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"  # only the stream DAG: no watcher or renewal DAG on the same account
    dags.mkdir()
    shutil.copy(DAGS_DIR / "upstox_portfolio_stream.py", dags)
    store_url = make_database("postgresql")
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_UPSTOX_DB": sql_connection_json(store_url),
        "UPSTOX_CONN_IDS": CONN_ID,
        "UPSTOX_STOP_AT": "off",
        "UPSTOX_MAX_BATCH_WAIT": "0.5",
        # A metadata DB of its own: the session's one holds earlier tests' runs of the same DAG.
        **airflow_env.private_metadata_db(tmp_path),
        **FAST_SCHEDULER_ENV,
    }
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    with (
        airflow_env.api_server(log_name="ride-api-server", extra_env=env) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
    ):
        env = {**env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/"}
        procs = [airflow_env.start(name, log_name=f"ride-{name}", extra_env=env) for name in STACK]

        def logs() -> str:
            return "\n".join(airflow_env.read_log(f"ride-{n}")[-4000:] for n in STACK)

        try:
            configure_app(simulator, base_url)
            create_connection(http, CONN_ID, simulator, simulator.token)
            wait_for(
                lambda: http.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 180, "DAG not parsed", logs
            )
            http.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})

            # Streaming: the market runs once the stream is connected, and updates are stored.
            wait_for(lambda: simulator.control.counters()["connections"] > 0, 180, "never connected", logs)
            simulator.control.start_market(20.0)
            wait_for(lambda: _order_events(engine) > 0, 120, "nothing stored", logs)
            time.sleep(3)

            # 03:30: the token dies mid-session. The task must neither fail nor be retried.
            simulator.control.expire_token()
            wait_for(lambda: simulator.control.counters()["unauthorized"] >= 2, 60, "token not refused", logs)
            # The episode starts: the operator learns of it (one warning in the task's log) and re-defers.
            wait_for(
                lambda: "refused the access token of connection" in _task_log(http), 60, "no episode", logs
            )
            time.sleep(1)
            counters = simulator.control.counters()
            refused = counters["unauthorized"]
            time.sleep(8)  # waiting: a few heartbeats, no call with the refused token
            # Nothing once waiting. Before it: the refusal at the reconnect, its one confirmation,
            # and at most one history/trade-book read of the operator that raced the stream's refusal.
            after = simulator.control.counters()
            assert after["unauthorized"] == refused, (
                counters["unauthorized_paths"],
                after["unauthorized_paths"],
            )
            assert refused in (2, 3), counters["unauthorized_paths"]

            # The phone: token request, approval -> the simulator POSTs to the plugin's notifier.
            app = login.LoginApp(APP["client_id"], APP["client_secret"])
            login.parse_token_request(login.send(login.token_request_request(simulator.base_url, app)))
            stored_before = _order_events(engine)
            delivery = sim_control(simulator, "approve").json()
            renewed_at = time.monotonic()
            assert delivery["status"] == 200, delivery
            wait_for(lambda: _order_events(engine) > stored_before, 60, "no update after the renewal", logs)
            took = time.monotonic() - renewed_at
            print(f"full stack: new token (notifier) -> first update committed after reconnect: {took:.1f} s")

            # Nothing lost: the store equals the ground truth once the market stops.
            simulator.control.quiesce()
            state = simulator.control.state()
            wait_for(lambda: not compare_with_simulator(engine, state), 60, "store != ground truth", logs)
            assert compare_with_simulator(engine, state) == []
            runs = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()["dag_runs"]  # the test's own DB
            assert len(runs) == 1, runs  # the same run all along: no restart
            run_url = f"/api/v2/dags/{DAG_ID}/dagRuns/{runs[0]['dag_run_id']}/taskInstances/{TASK_ID}"
            ti = http.get(run_url).json()
            assert ti["try_number"] == 1, ti
            assert ti["state"] in ("deferred", "running", "scheduled", "queued"), ti
            task_log = http.get(f"{run_url}/logs/1", headers={"Accept": "application/json"}).text
            assert task_log.count("refused the access token of connection") == 1, task_log[-3000:]
            rows = http.get("/upstox/api/connections", params={"probe": "false"}).json()["connections"]
            row = next(r for r in rows if r["conn_id"] == CONN_ID)  # the plugin wrote the new token
            assert row["fingerprint"] == sim_auth(simulator)["token_fingerprint"]
            everything = logs() + airflow_env.read_log("ride-api-server") + task_log
            for secret in (simulator.token, APP["client_secret"]):
                assert secret not in everything

        finally:
            # Later tests of the session share the metadata DB: a connection of the same app and
            # user pointing at this (then dead) simulator would take their notifier deliveries.
            http.delete(f"/api/v2/connections/{CONN_ID}")
            for proc in procs:
                airflow_env.stop(proc)
            engine.dispose()
