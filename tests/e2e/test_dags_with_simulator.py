"""The example DAGs run by real Airflow (``airflow dags test``) against the simulator.

Stream while the market moves, stop the market, stream again until idle (the reconnect snapshot
brings the final states), then reconcile: the store must equal ``/_sim/state``, hold every step
of every order and every fill (history backfill), and the reconciliation must find nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.harness import compare_with_simulator, dag_env, dag_run_state, dags_test, reconciliation_runs
from tests.reliability import history_figures

pytestmark = [pytest.mark.airflow_server, pytest.mark.timeout(900)]


def _run(env: dict[str, str], dag_id: str, conf: dict[str, Any]) -> str:
    proc = dags_test(env, dag_id, conf)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{dag_id} exited {proc.returncode}:\n{output[-6000:]}"
    assert dag_run_state(output) == "success", f"{dag_id} run did not succeed:\n{output[-8000:]}"
    return output


def _scenario(airflow_env: Any, simulator: Any, url: str, faults: bool) -> None:
    env = {**airflow_env.env, **dag_env(simulator.base_url, simulator.token, url)}
    simulator.control.start_market(rate=20)
    if faults:
        simulator.control.drop_every(15)
        simulator.control.duplicate(0.2)
        simulator.control.fail_authorize(503, count=2)
    first = _run(env, "upstox_portfolio_stream", {"max_batches": 4, "stop_at": None})
    simulator.control.quiesce()
    second = _run(env, "upstox_portfolio_stream", {"stop_after_idle_seconds": 3, "stop_at": None})
    logs = "\n".join(
        line for line in (first + second).splitlines() if "upstox_provider" in line or "Batch" in line
    )
    simulator.control.clear_faults()
    state = simulator.control.state()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        assert state["orders"], "the simulator produced no order"
        problems = compare_with_simulator(engine, state)
        assert problems == [], f"{len(problems)} problems, first {problems[:5]}\n{logs[-6000:]}"
        # Every step of every order and every fill of the day: the history backfill (issue 17).
        assert history_figures.gaps(url, state) == (0, 0), logs[-6000:]
        out = _run(env, "upstox_reconcile", {"on_discrepancy": "fail", "repair": False})
        runs = reconciliation_runs(engine)
        assert runs, out[-4000:]
        assert runs[-1]["status"] == "clean", runs[-1]
        assert runs[-1]["discrepancies"] == 0
        assert runs[-1]["compared"] >= len(state["orders"])
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stream_then_reconcile(backend: str, airflow_env: Any, simulator: Any, make_database: Any) -> None:
    _scenario(airflow_env, simulator, make_database(backend), faults=False)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_stream_with_faults(backend: str, airflow_env: Any, simulator: Any, make_database: Any) -> None:
    _scenario(airflow_env, simulator, make_database(backend), faults=True)
