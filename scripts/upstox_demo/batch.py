"""The default demo: stream for a while with ``airflow dags test``, reconcile, print a summary.

1. the simulator's market runs while ``upstox_portfolio_stream`` streams into the SQLite store;
2. the market closes; the DAG runs again until idle (the reconnect snapshot brings final states);
3. ``upstox_reconcile`` compares the store with the simulator's REST snapshots.
The summary's last lines are what a test checks: orders stored equal orders sent, reconciliation clean.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import sqlalchemy as sa

from upstox_demo.common import Demo, airflow_cli, say


def dags_test(env: dict[str, str], dag_id: str, conf: dict[str, Any]) -> None:
    """``airflow dags test`` that must end with a successful run."""
    proc = airflow_cli(env, "dags", "test", dag_id, "-c", json.dumps(conf))
    states = re.findall(r"DagRun Finished: .*?state=(\w+)", proc.stdout + proc.stderr)
    if states[-1:] != ["success"]:
        print((proc.stdout + proc.stderr)[-6000:])
        raise SystemExit(f"{dag_id} did not succeed (run states {states})")


def run(demo: Demo, *, seconds: float, rate: float) -> int:
    env = demo.airflow_env(
        **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(c) for conn_id, c in demo.connections().items()}
    )
    say(f"preparing Airflow's metadata database (SQLite) in {demo.home}")
    airflow_cli(env, "db", "migrate")
    with demo.control() as control:
        control.post("/_sim/market", params={"running": True, "rate": rate}).raise_for_status()
        batches = max(2, int(seconds / 0.5 / 2))
        say(f"market open: upstox_portfolio_stream streams into SQLite for about {seconds:.0f} s")
        started = time.monotonic()
        dags_test(env, "upstox_portfolio_stream", {"max_batches": batches, "stop_at": None})
        remaining = seconds - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        control.post("/_sim/market", params={"quiesce": True, "timeout": 10}).raise_for_status()
        say("market closed: streaming until idle to catch up")
        dags_test(env, "upstox_portfolio_stream", {"stop_after_idle_seconds": 3, "stop_at": None})
        say("running upstox_reconcile (the store against Upstox's REST snapshots)")
        dags_test(env, "upstox_reconcile", {"on_discrepancy": "warn"})
        state = control.get("/_sim/state").json()
    return summary(demo, state)


def summary(demo: Demo, state: dict[str, Any]) -> int:
    """Print what the store holds; 0 when reconciliation found nothing, else 1."""
    engine = sa.create_engine(f"sqlite:///{demo.store_file}")
    with engine.connect() as conn:
        orders = conn.execute(
            sa.text("SELECT status, COUNT(*) FROM upstox_orders GROUP BY status ORDER BY 2 DESC")
        ).all()
        positions = conn.execute(
            sa.text("SELECT instrument_token, product, quantity FROM upstox_positions ORDER BY 1")
        ).all()
        events = conn.execute(sa.text("SELECT COUNT(*) FROM upstox_order_events")).scalar_one()
        run = conn.execute(
            sa.text(
                "SELECT run_id, status, compared, discrepancies FROM upstox_reconciliation_runs "
                "ORDER BY run_id DESC LIMIT 1"
            )
        ).first()
        kinds = conn.execute(
            sa.text(
                "SELECT update_type, kind, COUNT(*) FROM upstox_reconciliation_discrepancies "
                "WHERE run_id = :r GROUP BY 1, 2"
            ),
            {"r": run.run_id if run else -1},
        ).all()
    engine.dispose()
    total = sum(n for _, n in orders)
    print("\n=== Upstox demo summary ===")
    print(f"store: {demo.store_file}")
    print(f"orders: {total} stored ({len(state['orders'])} sent by the simulator), {events} order states")
    for status, n in orders:
        print(f"  {status:<28} {n}")
    print(f"positions: {len(positions)}")
    for token, product, qty in positions[:15]:
        print(f"  {token:<28} {product:<4} qty {qty}")
    if run is None:
        print("reconciliation: no run recorded")
        return 1
    print(
        f"reconciliation run {run.run_id}: {run.status}, {run.compared} keys compared, "
        f"{run.discrepancies} discrepancies"
    )
    for update_type, kind, n in kinds:
        print(f"  {update_type} {kind}: {n}")
    return 0 if run.discrepancies == 0 and total == len(state["orders"]) else 1
