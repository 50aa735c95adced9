"""The store on a ``mysql`` connection when Airflow's MySQL driver is missing: PyMySQL, no compiler.

On Linux ``apache-airflow-providers-mysql`` needs the C ``mysqlclient``; on macOS it installs without
it, and its ``MySqlHook`` still asks for ``MySQLdb`` by default. Here ``MySQLdb`` is made unimportable
in a fresh interpreter (the provider stays installed), and the store must come up on the real MariaDB
through PyMySQL. The case with no MySQL provider at all runs in a fresh clone, see
``test_newcomer_demo.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

PROBE = """
import sys
sys.modules["MySQLdb"] = None  # as if mysqlclient were not installed
from airflow_provider_upstox.hooks.store import get_portfolio_store
store = get_portfolio_store("upstox_db")
print("driver", store.engine.url.drivername, "schema", store.migrate())
"""


def _probe(connection: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"AIRFLOW_CONN_UPSTOX_DB": json.dumps(connection), "AIRFLOW_HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.mark.timeout(240)
def test_mysql_connection_without_mysqlclient_opens_the_store_with_pymysql(
    mariadb_url: str, tmp_path: Path
) -> None:
    url = sa.make_url(mariadb_url)
    connection = {
        "conn_type": "mysql",
        "host": url.host,
        "port": url.port or 3306,
        "login": url.username,
        "password": url.password or "",
        "schema": url.database,
        "extra": {"charset": "utf8mb4"},
    }
    result = _probe(connection, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "driver mysql+pymysql schema" in result.stdout, result.stdout
    engine = sa.create_engine(mariadb_url, poolclass=sa.pool.NullPool)
    assert "upstox_orders" in sa.inspect(engine).get_table_names()
    engine.dispose()
