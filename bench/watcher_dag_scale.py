"""The AssetWatcher DAG with many accounts under a real Airflow stack (issue 18 item 3; not in CI).

For each N in ``--n`` (default ``10,100``): a fresh ``AIRFLOW_HOME`` and PostgreSQL metadata
database, a fresh PostgreSQL store, ``api-server``, ``dag-processor``, ``scheduler`` (LocalExecutor)
and ``triggerer`` (:class:`~tests.reliability.real_stack.Stack`, the settings of the scheduler tests),
one simulator process with N accounts (``python -m airflow_provider_upstox.simulator --accounts N
--stamp-frames``), N ``upstox`` connections and the shipped ``upstox_portfolio_events`` DAG over
them. Once every account's first snapshot is stored and the history backfill those snapshots queued
is done (steady state: printed, the one-off start-up), the market runs at 1 update/s per account
for ``--market`` seconds, then stops; printed per N, and as a ratio to the first (smallest) N:

* **parse**: the dag-processor's own last parse duration of the DAG file (``dag.last_parse_duration``);
* **schedule**: per DAG run, the last asset event that made the run (its ``asset_event.timestamp``)
  -> the persist task's ``start_date`` (the scheduler's and executor's share), and the run's first
  event -> start (including the wait for the previous run: ``max_active_runs=1``);
* **read**: the persist task's reads of events after its watermark (``read_ms`` and ``passes`` of
  its counts: the XCom ``counts``, or the return value before issue 18), per run;
* **run**: the persist task's duration, and how many task instances each run executed;
* **latency**: update sent by the simulator (``sim_sent_us`` in the frame, kept in the row's ``raw``)
  -> the order row committed (``updated_at``), p50/p99, from polling the store every 0.25 s; goal
  p99 <= 5 s.

    python bench/watcher_dag_scale.py [--n 10,100] [--market 60] [--group 0] [--keep]

The DAG's catch-up schedule is its default (every 5 minutes), as deployed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_common import FleetSimulator, connection_env, percentile
from tests.e2e.harness import sql_connection_json
from tests.reliability import matrix
from tests.reliability.real_stack import Stack, create_database

DAG_ID = "upstox_portfolio_events"
TASK_ID = "persist_events"
GOAL_P99_S = 5.0
ROWS = sa.text(
    "SELECT account, order_id, raw->>'sim_sent_us' AS sent, updated_at FROM upstox_orders "
    "WHERE updated_at > :since"
)
BACKLOG = sa.text("SELECT count(*) FROM upstox_backfill_queue WHERE done_at IS NULL AND attempts < 5")
RUNNING_BACKFILL = (
    "SELECT count(*) FROM task_instance WHERE dag_id = :d AND task_id LIKE 'backfill_history%' "
    "AND state IN ('scheduled', 'queued', 'running')"
)
RUNS = sa.text(
    """
    SELECT dr.run_id, ti.start_date, ti.end_date, min(ae.timestamp) AS first_ev, max(ae.timestamp) AS last_ev,
           count(ae.id) AS events
    FROM dag_run dr
    JOIN task_instance ti ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id AND ti.task_id = :t
    LEFT JOIN dagrun_asset_event dae ON dae.dag_run_id = dr.id
    LEFT JOIN asset_event ae ON ae.id = dae.event_id
    WHERE dr.dag_id = :d AND ti.start_date >= :since
    GROUP BY dr.run_id, ti.start_date, ti.end_date ORDER BY ti.start_date
    """
)


def measure(n: int, market_s: float, keep: bool, group: int = 0) -> dict[str, Any]:
    started = time.monotonic()
    sim = FleetSimulator(n)
    store_url = create_database("wscale_store")
    conn_ids = [f"upstox_fleet_{i}" for i in range(n)]
    env = {
        **connection_env(sim.base_url, sim.tokens()),
        "AIRFLOW_CONN_UPSTOX_DB": sql_connection_json(store_url),
        "UPSTOX_CONN_IDS": ",".join(conn_ids),
        "UPSTOX_MAX_BATCH_WAIT": "0.5",
        "UPSTOX_STOP_AT": "off",
        **({"UPSTOX_WATCH_GROUP_SIZE": str(group)} if group else {}),
    }
    stack = Stack(env, dag_id=DAG_ID, kind="wscale_meta")
    store = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    out: dict[str, Any] = {"n": n}
    try:
        stack.up()
        stack.wait(
            "the DAG parsed",
            lambda: bool(stack.scalar("SELECT count(*) FROM serialized_dag WHERE dag_id = :d", d=DAG_ID)),
            600,
            poll=1.0,
        )
        out["parse_s"] = stack.scalar("SELECT last_parse_duration FROM dag WHERE dag_id = :d", d=DAG_ID)
        stack.run("dags", "unpause", DAG_ID)

        def snapshots() -> bool:
            try:
                with store.connect() as conn:
                    count = conn.execute(sa.text("SELECT count(DISTINCT account) FROM upstox_holdings"))
                    return bool(count.scalar() == n)
            except sa.exc.SQLAlchemyError:
                return False

        stack.wait(f"every account's first snapshot stored ({n})", snapshots, 900, poll=1.0)
        out["up_s"] = round(time.monotonic() - started, 1)

        def backlog_done() -> bool:
            """The first snapshots' history backfill done and no backfill task running: steady state."""
            with store.connect() as conn:
                queued = conn.execute(BACKLOG).scalar()
            return not queued and not stack.scalar(RUNNING_BACKFILL, d=DAG_ID)

        stack.wait("the first snapshots' history backfill drained", backlog_done, 1200, poll=2.0)
        out["backlog_s"] = round(time.monotonic() - started - out["up_s"], 1)
        time.sleep(5)
        with store.connect() as conn:
            since = conn.execute(sa.text("SELECT now()")).scalar_one()
        sim.post("market", rate=1.0, running=True)
        print(f"N={n}: market running for {market_s:.0f} s", flush=True)  # a profiler can start here
        samples = poll_store(store, since, market_s, sim)
        out["latency"] = samples
        out["sent"] = sum(a["messages"] for a in sim.get("accounts")["accounts"])
        out |= run_figures(stack, since)
        out["parse_s"] = (
            stack.scalar("SELECT last_parse_duration FROM dag WHERE dag_id = :d", d=DAG_ID) or out["parse_s"]
        )
    finally:
        stack.down()
        store.dispose()
        sim.close()
        if keep:
            print(f"kept: AIRFLOW_HOME {stack.home}, {stack.meta_url}, {store_url}")
        else:
            stack.cleanup()
            matrix.drop_database(store_url)
    out["wall_s"] = round(time.monotonic() - started)
    return out


def poll_store(store: sa.Engine, since: datetime, market_s: float, sim: FleetSimulator) -> list[float]:
    """Send -> commit latency of every order state seen while the market runs and until it drains."""
    seen: dict[tuple[str, str, str], float] = {}
    cursor = since
    end = time.monotonic() + market_s
    stopped_at: float | None = None
    quiet_since = time.monotonic()
    while True:
        with store.connect() as conn:
            rows = conn.execute(ROWS, {"since": cursor}).all()
        for row in rows:
            if row.sent is None:
                continue
            key = (row.account, row.order_id, row.sent)
            if key not in seen:
                seen[key] = row.updated_at.timestamp() - int(row.sent) / 1e6
            cursor = max(cursor, row.updated_at)
        now = time.monotonic()
        if rows:
            quiet_since = now
        if stopped_at is None and now >= end:
            sim.post("market", running=False)
            stopped_at = now
        if stopped_at is not None and (now - quiet_since > 20 or now - stopped_at > 180):
            break
        time.sleep(0.25)
    return sorted(seen.values())


def run_figures(stack: Stack, since: datetime) -> dict[str, Any]:
    with stack.meta() as conn:
        runs = conn.execute(RUNS, {"d": DAG_ID, "t": TASK_ID, "since": since}).all()
        tis = conn.execute(
            sa.text(
                "SELECT count(*) FROM task_instance ti JOIN dag_run dr ON dr.run_id = ti.run_id "
                "AND dr.dag_id = ti.dag_id WHERE ti.dag_id = :d AND dr.start_date >= :since"
            ),
            {"d": DAG_ID, "since": since},
        ).scalar_one()
        values = conn.execute(
            sa.text(
                "SELECT x.value FROM xcom x JOIN dag_run dr ON dr.id = x.dag_run_id WHERE x.dag_id = :d "
                "AND x.task_id = :t AND x.key IN ('return_value', 'counts') AND dr.start_date >= :since"
            ),
            {"d": DAG_ID, "t": TASK_ID, "since": since},
        ).all()
    sched_last = [(r.start_date - r.last_ev).total_seconds() for r in runs if r.last_ev and r.start_date]
    sched_first = [(r.start_date - r.first_ev).total_seconds() for r in runs if r.first_ev and r.start_date]
    durations = [(r.end_date - r.start_date).total_seconds() for r in runs if r.end_date and r.start_date]
    reads: list[float] = []
    read_calls: list[int] = []
    for (value,) in values:
        data = json.loads(value) if isinstance(value, str) else value
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict):
            continue
        per_asset = [v for v in data.values() if isinstance(v, dict)] if "read_ms" not in data else [data]
        reads.append(sum(float(v.get("read_ms", 0.0)) for v in per_asset) / 1000)
        read_calls.append(sum(int(v.get("reads", v.get("passes", 0))) for v in per_asset))
    return {
        "runs": len(runs),
        "tis_per_run": tis / max(1, len(runs)),
        "sched_last": sched_last,
        "sched_first": sched_first,
        "durations": durations,
        "read_s": reads,
        "read_calls": read_calls,
    }


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def summary(r: dict[str, Any]) -> dict[str, float]:
    lat = r["latency"]
    return {
        "parse s": float(r.get("parse_s") or float("nan")),
        "event->start p50 s": _p(r["sched_last"], 0.5),
        "first event->start p50 s": _p(r["sched_first"], 0.5),
        "read/run p50 s": _p(r["read_s"], 0.5),
        "persist task p50 s": _p(r["durations"], 0.5),
        "latency p50 s": _p(lat, 0.5),
        "latency p99 s": _p(lat, 0.99),
    }


def report(results: list[dict[str, Any]]) -> None:
    base = summary(results[0])
    for r in results:
        s = summary(r)
        print(
            f"\nN={r['n']}: stack up + all snapshots {r['up_s']} s, their history backfill "
            f"{r['backlog_s']} s more, wall {r['wall_s']} s; "
            f"{r['runs']} runs, {r['tis_per_run']:.1f} task instances/run, "
            f"reads/run p50 {_p([float(c) for c in r['read_calls']], 0.5):.0f}; "
            f"{len(r['latency'])} order states sampled of {r['sent']} messages sent"
        )
        for name, value in s.items():
            ratio = value / base[name] if base[name] and base[name] == base[name] else float("nan")
            print(f"  {name:26s} {value:9.3f}   x{ratio:5.2f} of N={results[0]['n']}")
        p99 = s["latency p99 s"]
        print(f"  goal latency p99 <= {GOAL_P99_S} s: {'met' if p99 <= GOAL_P99_S else 'NOT met'}")


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--n", default="10,100", help="account counts, comma separated")
    parser.add_argument("--market", type=float, default=60.0, help="seconds of market at 1 update/s/account")
    parser.add_argument(
        "--group", type=int, default=0, help="UPSTOX_WATCH_GROUP_SIZE: accounts per watcher (0: unset)"
    )
    parser.add_argument("--keep", action="store_true", help="keep AIRFLOW_HOME and the databases")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = []
    for n in (int(x) for x in args.n.split(",")):
        print(f"N={n}: starting ...", flush=True)
        results.append(measure(n, args.market, args.keep, args.group))
        report(results)
        if args.json:
            args.json.write_text(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
