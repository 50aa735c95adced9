"""The continuous and the event-driven DAGs under a real scheduler, triggerer and dag-processor.

LocalExecutor, SQLite metadata DB (the isolated ``airflow_env`` home), the store on PostgreSQL.
The market runs, the DAG ingests, the market stops; the store must then converge to
``/_sim/state`` and reconciliation must find nothing. Slow (a minute or two each).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.harness import (
    FAST_SCHEDULER_ENV,
    compare_with_simulator,
    dag_env,
    dag_run_state,
    dags_test,
    reconciliation_runs,
)
from tests.ui.cdp import chromium_page, find_chromium

pytestmark = [pytest.mark.slow, pytest.mark.airflow_server, pytest.mark.timeout(900)]

# The README's screenshots are refreshed only on request (UPSTOX_UPDATE_SCREENSHOTS=1), so that a
# test run does not dirty the work tree; otherwise they go to a temporary folder.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("UPSTOX_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="upstox-screenshots-"))
)
STACK = ("dag-processor", "scheduler", "triggerer")


def _converge(engine: sa.Engine, simulator: Any, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    problems: list[str] = ["not checked"]
    while time.monotonic() < deadline:
        try:
            problems = compare_with_simulator(engine, simulator.control.state())
        except sa.exc.NoSuchTableError:
            problems = ["store not created yet"]
        if not problems:
            return []
        time.sleep(2)
    return problems


def _screenshot_grid(base_url: str, dag_id: str) -> None:
    """The DAG's grid while it runs, for the README (only where Chromium is installed)."""
    browser = find_chromium()
    if browser is None:
        return
    with chromium_page(browser) as page:
        page.navigate(f"{base_url}/dags/{dag_id}")
        page.wait_for(f"document.body.innerText.includes({dag_id!r})", 60)
        time.sleep(3)
        page.screenshot(SCREENSHOTS / f"{dag_id}-grid.png")


@pytest.mark.parametrize("dag_id", ["upstox_portfolio_stream", "upstox_portfolio_events"])
@pytest.mark.simulator(scenario="quiet")
def test_dag_under_scheduler(
    dag_id: str, airflow_env: Any, simulator: Any, make_database: Any, tmp_path: Path
) -> None:
    url = make_database("postgresql")
    env = {
        **dag_env(simulator.base_url, simulator.token, url),
        # A metadata DB of its own: the other DAG's run (left by the other parameter) stays out.
        **airflow_env.private_metadata_db(tmp_path),
        **FAST_SCHEDULER_ENV,
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
    }
    with airflow_env.api_server(log_name=f"{dag_id}-api-server", extra_env=env) as base_url:
        # Airflow 3 workers and the triggerer talk to the api-server's execution API.
        env = {**env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/"}
        procs = [airflow_env.start(name, log_name=f"{dag_id}-{name}", extra_env=env) for name in STACK]
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            _exercise(airflow_env, simulator, env, engine, dag_id, base_url)
        finally:
            for proc in procs:
                airflow_env.stop(proc)
            engine.dispose()


def _exercise(
    airflow_env: Any, simulator: Any, env: dict[str, str], engine: sa.Engine, dag_id: str, base_url: str
) -> None:
    deadline = time.monotonic() + 180
    while (
        airflow_env.run("dags", "list", "-o", "plain", extra_env=env, check=False).stdout.count(dag_id) == 0
    ):
        assert time.monotonic() < deadline, airflow_env.read_log(f"{dag_id}-dag-processor")[-4000:]
        time.sleep(3)
    if dag_id == "upstox_portfolio_stream":
        conf = '{"stop_after_idle_seconds": 20, "stop_at": null}'
        airflow_env.run("dags", "trigger", dag_id, "-c", conf, extra_env=env)
    airflow_env.run("dags", "unpause", dag_id, extra_env=env)
    simulator.control.start_market(rate=20)
    simulator.control.duplicate(0.1)
    time.sleep(20)
    _screenshot_grid(base_url, dag_id)
    simulator.control.quiesce()
    simulator.control.clear_faults()
    problems = _converge(engine, simulator, timeout=120)
    logs = "\n".join(airflow_env.read_log(f"{dag_id}-{n}")[-3000:] for n in STACK)
    assert problems == [], f"{problems[:10]}\n{logs}"
    airflow_env.run("dags", "pause", dag_id, extra_env=env)
    proc = dags_test({**airflow_env.env, **env}, "upstox_reconcile", {"on_discrepancy": "fail"})
    assert dag_run_state(proc.stdout + proc.stderr) == "success", proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = reconciliation_runs(engine)
    assert runs[-1]["status"] == "clean", runs[-1]
