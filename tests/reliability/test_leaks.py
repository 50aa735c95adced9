"""No secret leaks: the token and every issued stream code appear nowhere a faulty run wrote.

First the scanner proves it can see a planted secret in each kind of place (a log file, a URL-quoted
code, a SQLite file, a PostgreSQL JSON column, a captured text); a scanner that cannot fail proves
nothing. Then real Airflow runs the continuous DAG (``airflow dags test``) against a faulty
simulator with transient faults (drops, duplicates, malformed frames, a failing authorize), and
everything is scanned: ``AIRFLOW_HOME`` (task logs, the SQLite
metadata DB byte for byte), every table of the metadata DB row by row (``task_instance``
``next_kwargs``, ``trigger``, ``xcom``, ``asset_event``, ``log``...), the portfolio database, and the
captured stdout/stderr of the runs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.events import encode_group
from tests.e2e.harness import dag_env, dags_test
from tests.reliability.leakscan import Scanner, secrets_of

pytestmark = pytest.mark.timeout(600)


def test_scanner_finds_planted_secrets(tmp_path: Path, postgres_url: str) -> None:
    token, code = "sim-PLANTEDtoken-3f9a1c77d2", "0d9b6a8e-5c1f-4e2b-9a77-3c5d1e2f4a6b"
    secrets = secrets_of(token, [code])
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "clean.log").write_text("nothing to see; token sim-***\n")
    clean = Scanner(secrets)
    clean.scan_tree(tmp_path)
    clean.scan_text("stdout", "masked: ***")
    assert clean.hits == []
    assert clean.places == 2

    (tmp_path / "logs" / "task.log").write_text(f"Authorization: Bearer {token}\n")
    (tmp_path / "logs" / "url.log").write_text(f"GET /feed?requestId=x&code={quote(code, safe='')}\n")
    db = sqlite3.connect(tmp_path / "meta.db")
    db.execute("CREATE TABLE trigger (id INTEGER, kwargs TEXT)")
    db.execute("INSERT INTO trigger VALUES (1, ?)", (json.dumps({"url": f"wss://x/?code={code}"}),))
    db.commit()
    db.close()
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE xcom (id int, value jsonb)")
        conn.exec_driver_sql("INSERT INTO xcom VALUES (1, %s)", (json.dumps({"t": token.upper()}),))
    engine.dispose()

    scanner = Scanner(secrets)
    scanner.scan_tree(tmp_path)
    scanner.scan_database(f"sqlite:///{tmp_path / 'meta.db'}", name="meta")
    scanner.scan_database(postgres_url, name="pg")
    scanner.scan_text("exception", f"UpstoxStreamProtocolError: refused wss://h/feed?code={code}")
    # Inside a group event's compressed members: in a log line (the payload's repr) and in a row.
    packed = encode_group([{"status": "batch", "conn_id": "c1", "note": f"Bearer {token}"}])
    scanner.scan_text("triggerer log", f"Trigger fired event result=TriggerEvent<{packed!r}>")
    scanner.scan_text("asset_event", json.dumps({"from_trigger": True, "payload": packed}))
    found = {(Path(h.where).name if "/" in h.where else h.where.split("[")[0], h.label) for h in scanner.hits}
    assert ("task.log", "token") in found
    assert ("url.log", "stream code #0") in found
    assert ("meta.db", "stream code #0") in found  # the SQLite file, byte for byte
    assert ("meta:trigger", "stream code #0") in found  # and row by row
    assert ("pg:xcom", "token") in found  # case-insensitive, inside JSON
    assert ("exception", "stream code #0") in found
    assert ("triggerer log", "token") in found
    assert ("asset_event", "token") in found
    assert all(token not in str(h) and code not in str(h) for h in scanner.hits), "a hit repeats the secret"


@pytest.mark.airflow_server
@pytest.mark.simulator(scenario="quiet", ping_interval=0.5)
def test_no_secret_in_anything_a_faulty_airflow_run_wrote(
    airflow_env: Any, simulator: Any, make_database: Any
) -> None:
    store_url = make_database("postgresql")
    env = {**airflow_env.env, **dag_env(simulator.base_url, simulator.token, store_url)}
    ctl = simulator.control
    ctl.start_market(rate=30)
    ctl.set_faults(drop_every=40, drop_mode="reset", duplicate_probability=0.2, malformed_every=25)
    ctl.fail_authorize(503, count=2)
    ok = dags_test(env, "upstox_portfolio_stream", {"max_batches": 6, "stop_at": None}, timeout=300)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-4000:]
    ctl.clear_faults()
    ctl.quiesce()

    codes = ctl.issued_codes()["issued_codes"]
    assert len(codes) >= 3, "the run should have authorized several times"
    scanner = Scanner(secrets_of(simulator.token, codes))
    home = Path(airflow_env.env["AIRFLOW_HOME"])
    scanner.scan_tree(home)
    tables = scanner.scan_database(airflow_env.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name="metadata")
    store_tables = scanner.scan_database(store_url, name="portfolio")
    scanner.scan_text("dags test stdout", ok.stdout)
    scanner.scan_text("dags test stderr", ok.stderr)

    assert {"task_instance", "trigger", "xcom", "asset_event", "log"} <= set(tables)
    assert "upstox_orders" in store_tables
    assert "upstox_rejected_updates" in store_tables
    # `dags test` writes the task's log to its output: the scan must have seen the batches it logged
    assert "Batch 1:" in ok.stdout + ok.stderr, "no task log captured: the scan would prove nothing"
    assert scanner.places > 20
    assert [str(h) for h in scanner.hits] == []
