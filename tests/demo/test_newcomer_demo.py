"""``bash scripts/demo.sh`` and ``--ui`` the way a newcomer meets them (see :mod:`tests.demo.newcomer`).

One fresh clone per module, run by an ordinary user with no MySQL headers and no compiler. The first
test pays for the install (a few minutes from an empty pip cache); the others reuse its virtualenv.

* the default demo ends with its summary: every order the simulator sent is stored, reconciliation
  is clean, and the virtualenv holds no test, lint or MySQL package;
* the ``[mysql]`` extra installs there without a compiler and opens the store through an Airflow
  ``mysql`` connection (PyMySQL, no MySQL provider) on the real MariaDB;
* ``--ui`` serves Airflow's UI (the DAG list in headless Chromium shows the example DAGs, the events
  DAG runs), and SIGINT stops it leaving no process of the user behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.demo.newcomer import Newcomer, make_newcomer, remove
from tests.fixtures.databases import MARIADB_ADMIN_URL
from tests.ui.cdp import chromium_page, find_chromium

pytestmark = [pytest.mark.slow, pytest.mark.airflow_server]

DAG_IDS = ("upstox_portfolio_events", "upstox_portfolio_stream", "upstox_reconcile")
NOT_FOR_THE_DEMO = ("pytest", "ruff", "mypy", "hypothesis", "mysqlclient", "apache-airflow-providers-mysql",
                    "apache-airflow-providers-postgres", "psycopg", "pymysql")  # fmt: skip


def _required(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


@pytest.fixture(scope="module")
def newcomer() -> Iterator[Newcomer]:
    if not Path("/proc").is_dir() or (os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists()):
        _required("needs Linux /proc and, as root, setpriv to switch to an ordinary user")
    person = make_newcomer()
    try:
        yield person
    finally:
        remove(person)


@pytest.fixture(scope="module")
def demo_run(newcomer: Newcomer) -> subprocess.CompletedProcess[str]:
    """``bash scripts/demo.sh --seconds 10`` in the fresh clone (installs ``.venv-demo`` first)."""
    started = time.monotonic()
    result = newcomer.run("bash", "scripts/demo.sh", "--seconds", "10", timeout=900)
    print(f"demo.sh (with its install) took {time.monotonic() - started:.0f} s")
    return result


@pytest.mark.timeout(960)
def test_demo_ends_with_a_clean_summary(
    newcomer: Newcomer, demo_run: subprocess.CompletedProcess[str]
) -> None:
    out = demo_run.stdout + demo_run.stderr
    assert demo_run.returncode == 0, out[-6000:]
    stored = re.search(r"^orders: (\d+) stored \((\d+) sent by the simulator\)", out, re.M)
    assert stored, out[-3000:]
    assert int(stored[1]) == int(stored[2]) > 0, stored[0]
    assert re.search(r"^reconciliation run \d+: clean, [1-9]\d* keys compared, 0 discrepancies$", out, re.M)
    # One line per step: no installer output, no pip warnings about this machine's find-links.
    steps = out.split("=== Upstox demo summary ===")[0].strip().splitlines()
    assert all(line.startswith("demo: ") for line in steps), steps
    assert len(steps) <= 10, steps


@pytest.mark.timeout(300)
def test_demo_virtualenv_holds_only_the_runtime(
    newcomer: Newcomer, demo_run: subprocess.CompletedProcess[str]
) -> None:
    assert demo_run.returncode == 0
    listed = newcomer.run(".venv-demo/bin/python", "-m", "pip", "list", "--format=json", timeout=120)
    assert listed.returncode == 0, listed.stderr
    names = {item["name"].lower() for item in json.loads(listed.stdout)}
    assert {"apache-airflow", "airflow-provider-upstox", "apache-airflow-providers-sqlite"} <= names
    assert not names & set(NOT_FOR_THE_DEMO), names & set(NOT_FOR_THE_DEMO)
    # A second run finds the virtualenv up to date and does not reinstall.
    again = newcomer.run("bash", "-c", "bash scripts/demo.sh --help", timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is up to date" in again.stdout
    assert "installing" not in again.stdout


@pytest.mark.timeout(600)
def test_mysql_extra_needs_no_compiler_and_opens_the_store_with_pymysql(
    newcomer: Newcomer, demo_run: subprocess.CompletedProcess[str]
) -> None:
    assert demo_run.returncode == 0
    install = newcomer.run(
        ".venv-demo/bin/python", "-m", "pip", "install", "-q",
        "-c", "constraints/constraints-3.11.txt", "-e", ".[mysql]", timeout=480,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    name = f"upx_t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as exc:
        _required(f"MariaDB is not reachable: {exc}")
    url = sa.make_url(MARIADB_ADMIN_URL)
    connection = {"conn_type": "mysql", "host": url.host, "port": url.port or 3306, "login": url.username,
                  "password": url.password or "", "schema": name}  # fmt: skip
    probe = (
        "import importlib.util as u\n"
        "assert u.find_spec('MySQLdb') is None and u.find_spec('airflow.providers.mysql') is None\n"
        "from airflow_provider_upstox.hooks.store import get_portfolio_store\n"
        "store = get_portfolio_store('upstox_db')\n"
        "print('driver', store.engine.url.drivername, 'schema', store.migrate())\n"
        "import sqlalchemy as sa\n"
        "print('tables', len(sa.inspect(store.engine).get_table_names()))\n"
    )
    try:
        result = newcomer.run(
            ".venv-demo/bin/python", "-c", probe, timeout=180,
            AIRFLOW_HOME=str(newcomer.home / "airflow"), AIRFLOW_CONN_UPSTOX_DB=json.dumps(connection),
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "driver mysql+pymysql" in result.stdout, result.stdout
        with admin.connect() as conn:
            tables = {row[0] for row in conn.exec_driver_sql(f"SHOW TABLES FROM {name}")}
        assert {"upstox_orders", "upstox_order_events", "upstox_positions"} <= tables
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def _wait_for_line(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if match := re.search(pattern, text, re.M):
            return match
        assert proc.poll() is None, f"exited {proc.returncode}:\n{text[-5000:]}"
        time.sleep(1)
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{text[-5000:]}")


@pytest.mark.timeout(600)
def test_ui_serves_the_dags_and_ctrl_c_leaves_nothing_running(
    newcomer: Newcomer, demo_run: subprocess.CompletedProcess[str]
) -> None:
    assert demo_run.returncode == 0
    browser = find_chromium()
    if browser is None:
        _required("chromium is not installed")
    dedicated_user = newcomer.uid != os.getuid()
    before = set(newcomer.pids())
    log = newcomer.root / "demo-ui.log"
    proc = newcomer.popen("bash", "scripts/demo.sh", "--ui", log=log)
    try:
        url = _wait_for_line(log, r"Airflow UI:\s+(http://127\.0\.0\.1:\d+)\S*", proc, 300)[1]
        assert "login:" in log.read_text()
        with chromium_page(browser) as page:
            page.navigate(f"{url}/dags")
            page.wait_for(" && ".join(f"document.body.innerText.includes({d!r})" for d in DAG_IDS), 90)
            # the connections are in the metadata DB (not env vars), so the UI lists them
            page.navigate(f"{url}/connections")
            page.wait_for("document.body.innerText.includes('upstox_default')", 60)
            page.navigate(f"{url}/assets")
            page.wait_for("document.body.innerText.includes('upstox_events__upstox_default')", 60)
        # The events DAG streams: the store fills and the DAG runs (printed every 15 s).
        status = _wait_for_line(log, r"^demo: ([1-9]\d*) of \d+ orders stored; [1-9]\d* runs", proc, 180)
        assert int(status[1]) > 0
        health = httpx.get(f"{url}/api/v2/monitor/health", timeout=10).json()
        assert health["triggerer"]["status"] == "healthy", health
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (setpriv exec'd: this is the demo)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    assert "SIGINT received" in text
    assert "every Airflow process of the demo has stopped" in text
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/api/v2/monitor/health", timeout=5)
    if dedicated_user:
        time.sleep(1)
        left = set(newcomer.pids()) - before
        leftovers = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left if Path(f"/proc/{pid}").exists()
        }
        assert not leftovers, leftovers
