"""Shared by the end-to-end tests and ``bench/end_to_end_latency.py``: Airflow environment for the
example DAGs against a simulator, and the comparison of the store with ``/_sim/state``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"


#: A LocalExecutor stack that notices things within a second (the recommended settings, see
#: ``bench/end_to_end_latency.py``: a deferred task's exit is noticed within 1 s, so its stale
#: "success" executor event rarely races the resumed try).
FAST_SCHEDULER_ENV = {
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
}


def wait_for(condition: Any, timeout: float, what: str, logs: Any) -> Any:
    """Poll *condition* until it is truthy (returned); on timeout fail with *what* and ``logs()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}\n{logs()}"
        time.sleep(0.2)


def sql_connection_json(url: str) -> str:
    """An Airflow connection (JSON form) for a SQLAlchemy URL of the store."""
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        return json.dumps({"conn_type": "sqlite", "host": u.database})
    conn_type = "postgres" if u.get_backend_name() == "postgresql" else "mysql"
    return json.dumps(
        {
            "conn_type": conn_type,
            "host": u.host,
            "port": u.port,
            "login": u.username,
            "password": u.password or "",
            "schema": u.database,
        }
    )


def dag_env(
    base_url: str, token: str, store_url: str, *, conn_ids: Mapping[str, tuple[str, str]] | None = None
) -> dict[str, str]:
    """Environment for Airflow processes running the example DAGs against a simulator."""
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW_CONN_UPSTOX_DEFAULT": json.dumps(
            {"conn_type": "upstox", "password": token, "host": base_url}
        ),
        "AIRFLOW_CONN_UPSTOX_DB": sql_connection_json(store_url),
        "UPSTOX_MAX_BATCH_WAIT": "0.5",
    }
    for conn_id, (url, tok) in (conn_ids or {}).items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
            {"conn_type": "upstox", "password": tok, "host": url}
        )
    if conn_ids:
        env["UPSTOX_CONN_IDS"] = ",".join(["upstox_default", *conn_ids])
    return env


def dags_test(
    env: Mapping[str, str],
    dag_id: str,
    conf: Mapping[str, Any],
    *,
    timeout: int = 240,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``airflow dags test`` in a subprocess killed with SIGKILL after *timeout* s (it ignores SIGTERM)."""
    cmd = ["timeout", "-s", "KILL", str(timeout), sys.executable, "-m", "airflow", "dags", "test", dag_id]
    cmd += ["-c", json.dumps(dict(conf))]
    return subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False, cwd=cwd
    )


def compare_with_simulator(engine: sa.Engine, state: Mapping[str, Any]) -> list[str]:
    """Differences between the store and the simulator's ground truth; empty when they agree.

    Checks every order's status and filled quantity, every position's quantity, and that no order
    state was stored more often than the simulator sent it.
    """
    account = state["user_id"]
    problems: list[str] = []
    md = sa.MetaData()
    orders = sa.Table("upstox_orders", md, autoload_with=engine)
    positions = sa.Table("upstox_positions", md, autoload_with=engine)
    events = sa.Table("upstox_order_events", md, autoload_with=engine)
    with engine.connect() as conn:
        stored = {r.order_id: r for r in conn.execute(sa.select(orders).where(orders.c.account == account))}
        stored_pos = {
            f"{r.instrument_token}:{r.product}": r
            for r in conn.execute(sa.select(positions).where(positions.c.account == account))
        }
        event_rows = list(conn.execute(sa.select(events).where(events.c.account == account)))
    for order_id, info in state["orders"].items():
        final = info["final"]
        row = stored.get(order_id)
        if row is None:
            problems.append(f"order {order_id} missing (final status {final['status']!r})")
            continue
        if row.status != final["status"] or int(row.filled_quantity or 0) != int(
            final["filled_quantity"] or 0
        ):
            problems.append(
                f"order {order_id}: stored {row.status!r}/{row.filled_quantity}, "
                f"truth {final['status']!r}/{final['filled_quantity']}"
            )
    for order_id in set(stored) - set(state["orders"]):
        problems.append(f"order {order_id} stored but unknown to the simulator")
    for key, pos in state["positions"].items():
        row = stored_pos.get(key)
        if row is None:
            if int(pos.get("quantity") or 0) != 0:
                problems.append(f"position {key} missing")
            continue
        if int(row.quantity or 0) != int(pos.get("quantity") or 0):
            problems.append(f"position {key}: stored {row.quantity}, truth {pos.get('quantity')}")
    for key, (count, sent) in duplicated_order_states(state, event_rows).items():
        problems.append(f"order state {key} stored {count} times, sent {sent}")
    return problems


#: An order state as both sides name it: (order_id, status, filled quantity, order_request_id).
OrderState = tuple[str, str, int, str]


def duplicated_order_states(
    state: Mapping[str, Any], event_rows: Iterable[Any]
) -> dict[OrderState, tuple[int, int]]:
    """Order states stored in ``upstox_order_events`` more often than the simulator sent them.

    Anything stored counts as sent at least once: a snapshot can bring a state the socket never
    delivered. :returns: ``{state: (times stored, times sent)}``.
    """
    sent: Counter[OrderState] = Counter()
    for order_id, info in state["orders"].items():
        for h in info["history"]:
            sent[
                (order_id, h["status"], int(h.get("filled_quantity") or 0), str(h.get("order_request_id")))
            ] += 1
    got: Counter[OrderState] = Counter(
        (r.order_id, r.status, int(r.filled_quantity or 0), str(r.order_request_id)) for r in event_rows
    )
    return {key: (n, sent.get(key, 0)) for key, n in got.items() if n > max(sent.get(key, 0), 1)}


def reconciliation_runs(engine: sa.Engine) -> list[dict[str, Any]]:
    runs = sa.Table("upstox_reconciliation_runs", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(runs).order_by(runs.c.run_id)).mappings()]


def dag_run_state(output: str) -> str | None:
    """The final state ``airflow dags test`` logged (its exit code is 0 even when the run failed)."""
    import re

    found = re.findall(r"DagRun Finished: .*?state=(\w+)", output)
    return found[-1] if found else None
