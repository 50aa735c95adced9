"""The demo: a local Upstox, real Airflow, a SQLite store, and a summary. No broker account needed.

Run ``bash scripts/demo.sh`` (creates a venv, installs the provider, calls this script), or, in an
environment where the provider is installed, ``python scripts/demo.py [--seconds 20]``.

What it does:
1. starts the simulator (``python -m airflow_provider_upstox.simulator``) on a free port with a
   random token, market running;
2. creates a throw-away ``AIRFLOW_HOME`` (SQLite metadata DB) and points the connections at the
   simulator (``AIRFLOW_CONN_UPSTOX_DEFAULT``) and at a SQLite store file (``AIRFLOW_CONN_UPSTOX_DB``);
3. runs the ``upstox_portfolio_stream`` DAG with real Airflow (``airflow dags test``) for a short
   while, stops the market, runs it again until idle (the reconnect snapshot brings final states);
4. runs ``upstox_reconcile`` and prints orders, positions and discrepancies.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"simulator did not answer at {url}")


def airflow(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``airflow <args>``, killed with SIGKILL on timeout (``dags test`` ignores SIGTERM)."""
    cmd = ["timeout", "-s", "KILL", str(timeout), sys.executable, "-m", "airflow", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    states = re.findall(r"DagRun Finished: .*?state=(\w+)", output)
    if proc.returncode != 0 or (args[:2] == ("dags", "test") and states[-1:] != ["success"]):
        sys.stderr.write(output[-6000:])
        raise SystemExit(
            f"airflow {' '.join(args[:3])} failed (exit code {proc.returncode}, run {states[-1:]})"
        )
    return proc


def summary(store_file: Path, state: dict) -> int:
    engine = sa.create_engine(f"sqlite:///{store_file}")
    md = sa.MetaData()
    md.reflect(engine)
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
    print(f"store: {store_file}")
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
    return 0 if run.discrepancies == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long the market runs while streaming")
    parser.add_argument("--rate", type=float, default=20, help="simulator updates per second")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="upstox-demo-"))
    home, store_file = work / "airflow", work / "portfolio.db"
    (home / "dags").mkdir(parents=True)
    token, port = f"demo-{secrets.token_urlsafe(16)}", free_port()
    base_url = f"http://127.0.0.1:{port}"
    sim_log = (work / "simulator.log").open("wb")
    sim = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_upstox.simulator", "--host", "127.0.0.1",
         "--port", str(port), "--token", token, "--seed", "7", "--scenario", "quiet"],
        stdout=sim_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"{base_url}/_sim/state")
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_UPSTOX_DEFAULT": json.dumps(
                {"conn_type": "upstox", "password": token, "host": base_url}
            ),
            "AIRFLOW_CONN_UPSTOX_DB": json.dumps({"conn_type": "sqlite", "host": str(store_file)}),
            "UPSTOX_MAX_BATCH_WAIT": "0.5",
        }
        print(f"simulator on {base_url}; Airflow home {home}")
        print("migrating the Airflow metadata database ...")
        airflow(env, "db", "migrate")
        control = httpx.Client(base_url=base_url, timeout=30)
        control.post("/_sim/market", params={"running": True, "rate": args.rate}).raise_for_status()
        batches = max(2, int(args.seconds / 0.5 / 2))
        print(f"running upstox_portfolio_stream while the market moves (up to {batches} batches) ...")
        started = time.monotonic()
        airflow(env, "dags", "test", "upstox_portfolio_stream", "-c",
                json.dumps({"max_batches": batches, "stop_at": None}))  # fmt: skip
        remaining = args.seconds - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        control.post("/_sim/market", params={"quiesce": True, "timeout": 10}).raise_for_status()
        print("market closed; streaming until idle to catch up ...")
        airflow(env, "dags", "test", "upstox_portfolio_stream", "-c",
                json.dumps({"stop_after_idle_seconds": 3, "stop_at": None}))  # fmt: skip
        print("running upstox_reconcile ...")
        airflow(env, "dags", "test", "upstox_reconcile", "-c", json.dumps({"on_discrepancy": "warn"}))
        state = control.get("/_sim/state").json()
        return summary(store_file, state)
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
        sim_log.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
