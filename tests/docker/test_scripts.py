"""The shell scripts of docker/, run for real outside a container.

* ``postgres-init/10-portfolio-db.sh`` against the local PostgreSQL (as the postgres image's entrypoint
  would run it), with unique names so parallel test runs never collide.
* ``demo-setup.sh`` against a real Airflow CLI and metadata database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.docker.dockerfile_model import REPO
from tests.fixtures.airflow_env import AirflowEnv
from tests.fixtures.databases import POSTGRES_ADMIN_URL

INIT_SCRIPT = REPO / "docker" / "postgres-init" / "10-portfolio-db.sh"
DEMO_SETUP = REPO / "docker" / "demo-setup.sh"


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


class TestPortfolioDatabaseInit:
    @pytest.fixture
    def names(self) -> Iterator[dict[str, str]]:
        suffix = uuid.uuid4().hex[:12]
        names = {"db": f"upx_pf_{suffix}", "role": f"upx_pf_role_{suffix}", "other": f"upx_pf_other_{suffix}"}
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with admin.connect():
                pass
        except sa.exc.OperationalError as exc:
            _unavailable(f"PostgreSQL not reachable: {exc}")
        yield names
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{names["role"]}"')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{names["other"]}"')
        admin.dispose()

    def _run(self, names: dict[str, str], password: str) -> subprocess.CompletedProcess[str]:
        if shutil.which("psql") is None:
            _unavailable("psql is not installed")
        url = sa.make_url(POSTGRES_ADMIN_URL)
        env = {
            **os.environ,
            "PGHOST": url.host or "127.0.0.1",
            "PGPORT": str(url.port or 5432),
            "PGPASSWORD": url.password or "",
            "POSTGRES_USER": url.username or "postgres",
            "PORTFOLIO_DB_NAME": names["db"],
            "PORTFOLIO_DB_USER": names["role"],
            "PORTFOLIO_DB_PASSWORD": password,
        }
        return subprocess.run(
            ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    def test_creates_a_separate_database_owned_by_its_own_role(self, names: dict[str, str]) -> None:
        password = "it's a pass word"  # quotes and spaces must not break the SQL
        result = self._run(names, password)
        assert result.returncode == 0, result.stderr
        assert f"portfolio store database {names['db']}" in result.stdout
        assert password not in result.stdout + result.stderr

        url = sa.make_url(POSTGRES_ADMIN_URL).set(
            username=names["role"], password=password, database=names["db"]
        )
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:  # the store's role can create its tables there
            conn.exec_driver_sql("CREATE TABLE upstox_probe (id int)")
            owner = conn.exec_driver_sql(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            ).scalar()
        engine.dispose()
        assert owner == names["role"]

        # Run again (a restarted init must not fail) and check that other roles are kept out.
        again = self._run(names, password)
        assert again.returncode == 0, again.stderr
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{names["other"]}" LOGIN')
        admin.dispose()
        outsider = sa.create_engine(
            sa.make_url(POSTGRES_ADMIN_URL).set(username=names["other"], password=None, database=names["db"]),
            poolclass=sa.pool.NullPool,
        )
        with pytest.raises(sa.exc.OperationalError, match="permission denied"):
            outsider.connect()
        outsider.dispose()

    def test_refuses_to_run_without_a_password(self, names: dict[str, str]) -> None:
        result = self._run(names, "")
        assert result.returncode != 0
        assert "PORTFOLIO_DB_PASSWORD" in result.stderr


class TestDemoSetup:
    def _run(
        self, airflow_env: AirflowEnv, dags: str, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **airflow_env.env,
            # The `airflow` of the interpreter running the tests, as the image's PATH would have it.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "UPSTOX_DEMO_DAGS": dags,
            "UPSTOX_DEMO_SETUP_ATTEMPTS": "2",
            "UPSTOX_DEMO_SETUP_INTERVAL": "0",
            **(extra or {}),
        }
        return subprocess.run(
            ["bash", str(DEMO_SETUP)], env=env, capture_output=True, text=True, timeout=240, check=False
        )

    @pytest.mark.airflow_server
    def test_fails_for_a_dag_that_never_appears(self, airflow_env: AirflowEnv) -> None:
        """``airflow dags unpause`` alone would succeed here; the script must not."""
        dag_id = f"upstox_missing_{uuid.uuid4().hex[:8]}"
        result = self._run(airflow_env, dag_id)
        assert result.returncode == 1
        assert f"could not unpause {dag_id}" in result.stderr

    @pytest.mark.slow
    @pytest.mark.airflow_server
    def test_unpauses_parsed_dags(self, airflow_env: AirflowEnv, tmp_path: Path) -> None:
        """On its own metadata DB (not the shared test one), with the repository's real DAGs."""
        extra = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'demo.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
            "UPSTOX_CONN_IDS": "upstox_default",
        }
        airflow_env.run("db", "migrate", extra_env=extra, timeout=300)
        airflow_env.run("dags", "reserialize", extra_env=extra, timeout=300)
        result = self._run(airflow_env, "upstox_portfolio_events, upstox_reconcile", extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "unpaused upstox_portfolio_events" in result.stdout
        assert "unpaused upstox_reconcile" in result.stdout
        listing = airflow_env.run("dags", "list", "-o", "json", extra_env=extra).stdout
        rows = json.loads(next(line for line in listing.splitlines() if line.startswith("[")))
        paused = {row["dag_id"]: row["is_paused"] for row in rows}
        assert paused["upstox_portfolio_events"] in (False, "False")
        assert paused["upstox_reconcile"] in (False, "False")
        assert paused["upstox_portfolio_stream"] in (True, "True")
