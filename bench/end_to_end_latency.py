"""End-to-end latency: update sent by the simulator -> row committed in the store.

Runs the ``upstox_portfolio_stream`` DAG under a real ``airflow dag-processor``, ``scheduler`` and
``triggerer`` (LocalExecutor, isolated AIRFLOW_HOME) against an in-process simulator in ``quiet``
mode. Every ``--interval`` seconds the bench advances the market one step (``/_sim/market
steps=1``: the step's messages go out as the call returns) and notes the time; the latency of a
step is the store's ``updated_at`` of the order rows it changed minus that time. Prints the
distribution and the ratio of p99 to the goal ``max_batch_wait + 2 s``.

    python bench/end_to_end_latency.py [--steps 40] [--interval 0.7] [--max-batch-wait 0.5]

The baseline measured in the same run is the round trip of a bare REST read of the simulator
(the floor any pipeline pays), printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from airflow_provider_upstox.simulator import run_simulator_in_thread  # noqa: E402
from tests.e2e.harness import dag_env  # noqa: E402
from tests.fixtures.airflow_env import AIRFLOW_TEST_ENV, AIRFLOW_TEST_HOME, AirflowEnv  # noqa: E402

STACK = ("dag-processor", "scheduler", "triggerer")
ORDER_ROW = sa.text("SELECT status, filled_quantity, updated_at FROM upstox_orders WHERE order_id = :o")


def _matches(row: Any, final: dict[str, Any]) -> bool:
    status_ok = row.status == final["status"]
    return bool(status_ok and int(row.filled_quantity or 0) == int(final["filled_quantity"] or 0))


def _epoch(value: Any) -> float:
    """The store's ``updated_at`` (SQLite may return naive UTC text or datetime) as epoch seconds."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return float(value.timestamp())


ORDER_ROW = sa.text("SELECT status, filled_quantity, updated_at FROM upstox_orders WHERE order_id = :o")


def _matches(row: Any, final: dict[str, Any]) -> bool:
    return bool(
        row.status == final["status"] and int(row.filled_quantity or 0) == int(final["filled_quantity"] or 0)
    )


def _epoch(value: Any) -> float:
    """The store's ``updated_at`` (SQLite returns naive UTC text or datetime) as epoch seconds."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return float(value.timestamp())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description="end-to-end latency under the real scheduler+triggerer")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.7)
    parser.add_argument("--max-batch-wait", type=float, default=0.5)
    args = parser.parse_args()

    airflow = AirflowEnv(home=AIRFLOW_TEST_HOME, env={**os.environ, **AIRFLOW_TEST_ENV})
    print(f"Airflow home {AIRFLOW_TEST_HOME}; migrating ...", flush=True)
    airflow.run("db", "migrate", timeout=300)
    store_file = Path(tempfile.mkdtemp(prefix="upstox-bench-")) / "store.db"
    url = f"sqlite:///{store_file}"
    with run_simulator_in_thread(token="bench-token-0123456789", scenario="quiet", seed=3) as sim:
        env = {
            **dag_env(sim.base_url, sim.token, url),
            "UPSTOX_MAX_BATCH_WAIT": str(args.max_batch_wait),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
        server = airflow.api_server(log_name="bench-api-server", extra_env=env)
        base_url = server.__enter__()
        # Airflow 3 workers and the triggerer talk to the api-server's execution API.
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{base_url}/execution/"
        procs = [airflow.start(name, log_name=f"bench-{name}", extra_env=env) for name in STACK]
        try:
            deadline = time.monotonic() + 180
            while (
                "upstox_portfolio_stream"
                not in airflow.run("dags", "list", extra_env=env, check=False).stdout
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("the DAG was not parsed in time")
                time.sleep(2)
            airflow.run(
                "dags", "trigger", "upstox_portfolio_stream", "-c", '{"stop_at": null}', extra_env=env
            )
            airflow.run("dags", "unpause", "upstox_portfolio_stream", extra_env=env)
            engine = sa.create_engine(url)
            print("waiting for the stream task to connect ...", flush=True)
            while True:  # the first snapshot lands in the store once the trigger is connected
                try:
                    with engine.connect() as conn:
                        if conn.execute(sa.text("SELECT COUNT(*) FROM upstox_holdings")).scalar_one():
                            break
                except sa.exc.OperationalError:
                    pass
                if time.monotonic() > deadline + 120:
                    raise SystemExit(
                        "the stream never wrote to the store:\n" + airflow.read_log("bench-triggerer")[-3000:]
                    )
                time.sleep(0.5)
            time.sleep(3)
            rest = []
            with httpx.Client(
                base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.token}"}
            ) as http:
                for _ in range(20):
                    t0 = time.time()
                    http.get("/v2/order/retrieve-all").raise_for_status()
                    rest.append(time.time() - t0)
            latencies: list[float] = []
            missing = 0
            for _ in range(args.steps):
                before = {k: len(v["history"]) for k, v in sim.control.state()["orders"].items()}
                t_send = time.time()
                sim.control.step(1)
                after = sim.control.state()["orders"]
                changed = {k: v["final"] for k, v in after.items() if len(v["history"]) != before.get(k, 0)}
                wait_until = time.monotonic() + args.max_batch_wait + 10
                seen: dict[str, float] = {}
                while len(seen) < len(changed) and time.monotonic() < wait_until:
                    with engine.connect() as conn:
                        for oid, final in changed.items():
                            if oid in seen:
                                continue
                            row = conn.execute(ORDER_ROW, {"o": oid}).first()
                            if row is not None and _matches(row, final):
                                seen[oid] = _epoch(row.updated_at)
                    time.sleep(0.02)
                missing += len(changed) - len(seen)
                latencies.extend(max(0.0, ts - t_send) for ts in seen.values())
                time.sleep(max(0.0, args.interval))
            engine.dispose()
        finally:
            for proc in procs:
                airflow.stop(proc)
            server.__exit__(None, None, None)
    if not latencies:
        print("no latency sample")
        return 1
    goal = args.max_batch_wait + 2.0
    p50, p90, p99 = (percentile(latencies, q) for q in (50, 90, 99))
    print(f"\nsamples: {len(latencies)} order updates, {args.steps} steps ({missing} not seen in time)")
    print(
        f"latency  min {min(latencies):.3f}  p50 {p50:.3f}  p90 {p90:.3f}  p99 {p99:.3f}  "
        f"max {max(latencies):.3f}  mean {statistics.fmean(latencies):.3f} s"
    )
    print(f"baseline: bare REST read round trip p50 {percentile(rest, 50) * 1000:.1f} ms")
    verdict = "met" if p99 <= goal else "NOT met"
    print(f"goal p99 <= max_batch_wait + 2 s = {goal:.2f} s: p99/goal = {p99 / goal:.2f} ({verdict})")
    return 0 if p99 <= goal else 2


if __name__ == "__main__":
    raise SystemExit(main())
