"""``upstox_token_renewal`` under a real scheduler, triggerer and dag-processor, with the plugin.

One run for two accounts: the first owner approves on the phone (the simulator POSTs to the
plugin's notifier, the plugin writes the connection, the deferred task's trigger sees the new token
and the task succeeds); the second rejects (nothing arrives, the request expires, that account's
task alone fails with a clear message and its connection keeps its token). Slow: a minute or two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_upstox.simulator import run_simulator_in_thread
from tests.e2e.harness import FAST_SCHEDULER_ENV, wait_for
from tests.plugins.conftest import APP, configure_app, create_connection, sim_auth, sim_control

pytestmark = [pytest.mark.slow, pytest.mark.airflow_server, pytest.mark.timeout(600)]

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
STACK = ("dag-processor", "scheduler", "triggerer")
DAG_ID = "upstox_token_renewal"


def _task_states(http: httpx.Client, run_id: str) -> dict[str, str]:
    answer = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in answer.json().get("task_instances", [])}


def _state(http: httpx.Client, conn_id: str) -> dict[str, Any]:
    rows = http.get("/upstox/api/connections", params={"probe": "false"}).json()["connections"]
    return next(row for row in rows if row["conn_id"] == conn_id)  # type: ignore[no-any-return]


@pytest.mark.simulator(scenario="quiet")
def test_daily_renewal_approved_and_rejected(airflow_env: Any, simulator: Any, tmp_path: Path) -> None:
    env = {
        # A metadata DB of its own: the session's one may hold earlier tests' stream DAG runs, still
        # running or deferred, which this test's scheduler would resume in the executor's slots.
        **airflow_env.private_metadata_db(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "UPSTOX_TOKEN_RENEWAL_CONN_IDS": "upstox_approves,upstox_rejects",
        # No scheduled run besides the test's own: unpausing a weekday-08:00 DAG would also create a
        # run for the last tick (catchup=False still runs the latest one), with token requests of its
        # own. 29 February 08:00 last fell before the DAG's start date.
        "UPSTOX_TOKEN_RENEWAL_CRON": "0 8 29 2 *",
        **FAST_SCHEDULER_ENV,
    }
    second_token = "second-account-" + "t" * 20
    with (
        run_simulator_in_thread(token=second_token, scenario="quiet", user_id="CD5678") as other,
        airflow_env.api_server(log_name="renewal-api-server", extra_env=env) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
    ):
        env = {**env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/"}
        procs = [airflow_env.start(name, log_name=f"renewal-{name}", extra_env=env) for name in STACK]

        def logs() -> str:
            return "\n".join(airflow_env.read_log(f"renewal-{n}")[-3000:] for n in STACK)

        try:
            accounts = {"upstox_approves": (simulator, "AB1234"), "upstox_rejects": (other, "CD5678")}
            for conn_id, (sim, user_id) in accounts.items():
                configure_app(sim, base_url, request_ttl=40)
                create_connection(http, conn_id, sim, sim.token, user_id)
            before = _state(http, "upstox_rejects")
            wait_for(
                lambda: http.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 180, "DAG not parsed", logs
            )
            http.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
            answers: list[str] = []

            def trigger_run() -> str | None:
                # The DAG can be listed a moment before a run of it may be created (its serialized
                # version is written separately): ask again until the API accepts the run.
                answer = http.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
                answers.append(f"{answer.status_code} {answer.text[:300]}")
                return answer.json().get("dag_run_id") if answer.status_code == 200 else None

            run_id = wait_for(trigger_run, 120, "no DAG run", lambda: f"{answers[-1:]}\n{logs()}")

            for sim in (simulator, other):
                wait_for(lambda sim=sim: sim_auth(sim)["pending"], 180, "no token request", logs)
            seen: list[dict[str, str]] = []

            def waiting() -> bool:
                # The approving account's task must be waiting for the token; the rejecting one may
                # already have failed on a slow machine (its request expires after request_ttl).
                states = _task_states(http, run_id)
                seen.append(states)
                return states.get("renew__upstox_approves") == "deferred" and states.get(
                    "renew__upstox_rejects"
                ) in ("deferred", "failed")

            wait_for(waiting, 180, "not deferred", lambda: f"last task states: {seen[-1:]}\n{logs()}")
            assert sim_control(simulator, "approve").json()["status"] == 200
            assert sim_control(other, "reject").status_code == 200

            def finished() -> dict[str, str] | None:
                states = _task_states(http, run_id)
                return states if states and all(v in ("success", "failed") for v in states.values()) else None

            final = wait_for(finished, 180, "tasks did not finish", logs)
            assert final == {"renew__upstox_approves": "success", "renew__upstox_rejects": "failed"}, final
            approved = _state(http, "upstox_approves")
            assert approved["fingerprint"] == sim_auth(simulator)["token_fingerprint"]
            assert approved["source"] == "notifier"
            assert _state(http, "upstox_rejects") == before
            failure_log = _task_log(http, run_id, "renew__upstox_rejects")
            assert "without an approval" in failure_log
            everything = logs() + airflow_env.read_log("renewal-api-server") + failure_log
            for secret in (simulator.token, second_token, APP["client_secret"]):
                assert secret not in everything
        finally:
            # The metadata DB outlives this test: connections of the same app and users pointing at
            # these (then dead) simulators would take later tests' notifier deliveries (502).
            for conn_id in ("upstox_approves", "upstox_rejects"):
                http.delete(f"/api/v2/connections/{conn_id}")
            for proc in procs:
                airflow_env.stop(proc)


def _task_log(http: httpx.Client, run_id: str, task_id: str) -> str:
    answer = http.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
        headers={"Accept": "application/json"},
    )
    return answer.text  # JSON: the log events, each with its message
