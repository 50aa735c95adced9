"""The compose files, checked without a Docker engine (there is none on the build machines).

What ``docker compose config`` and ``up`` would reject or get wrong is checked on the files as
Compose reads them (see :mod:`tests.docker.compose_model`): the services and profiles, health checks
and ``depends_on`` conditions, the executor of each setup, and that the Upstox access token only
ever comes from the ``UPSTOX_ACCESS_TOKEN`` variable. The connection strings are parsed by real
Airflow and by the provider's own connection validation.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.docker.compose_model import (
    BASE_FILE,
    CELERY_FILE,
    DOCKER_DIR,
    InterpolationError,
    active_services,
    interpolate,
    load_project,
    load_raw,
    variables_in,
)

TOKEN = "sentinel-token-7f3a9c"  # what a user would put in .env; must reach exactly the right places
ENV = {"UPSTOX_ACCESS_TOKEN": TOKEN}

CORE = {
    "postgres",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
DEMO = {"simulator", "airflow-demo-setup"}
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_project(BASE_FILE, env=ENV)


@pytest.fixture(scope="module")
def celery() -> dict[str, Any]:
    return load_project(BASE_FILE, CELERY_FILE, env=ENV)


def _uses_our_image(service: dict[str, Any]) -> bool:
    return "airflow-provider-upstox" in str(service.get("image", ""))


class TestServicesAndProfiles:
    def test_default_setup_is_the_official_layout(self, base: dict[str, Any]) -> None:
        assert active_services(base, set()) == CORE

    def test_demo_profile_adds_simulator_and_setup(self, base: dict[str, Any]) -> None:
        assert active_services(base, {"demo"}) == CORE | DEMO
        for name in DEMO:
            assert base["services"][name]["profiles"] == ["demo"]

    def test_celery_setup_adds_broker_workers_and_flower(self, celery: dict[str, Any]) -> None:
        assert active_services(celery, set()) == CORE | {"redis", "airflow-worker"}
        assert active_services(celery, {"demo", "flower"}) == CORE | DEMO | {
            "redis",
            "airflow-worker",
            "flower",
        }

    def test_simulator_runs_the_provider_cli_from_the_same_image(self, base: dict[str, Any]) -> None:
        simulator = base["services"]["simulator"]
        assert simulator["image"] == base["services"]["airflow-scheduler"]["image"]
        assert simulator["entrypoint"] == ["python", "-m", "airflow_provider_upstox.simulator"]
        assert simulator["command"][:2] == ["--host=0.0.0.0", "--port=8765"]
        assert simulator["init"] is True  # a PID 1 that reaps and forwards signals

    def test_every_airflow_service_is_built_from_the_repository(self, celery: dict[str, Any]) -> None:
        for name, service in celery["services"].items():
            if _uses_our_image(service) and name != "simulator":
                assert service["build"] == {
                    "context": "..",
                    "dockerfile": "docker/Dockerfile",
                    "args": {"PROVIDER_EXTRAS": "postgres", "UPSTOX_PIP_CHECK": "strict"},
                }, name
                build = service["build"]
                assert (DOCKER_DIR / build["context"] / build["dockerfile"]).is_file(), name

    def test_nothing_runs_as_root_but_the_init_job(self, celery: dict[str, Any]) -> None:
        for name, service in celery["services"].items():
            if _uses_our_image(service) and name not in ("airflow-init", "simulator"):
                assert service["user"] == "50000:0", name
        assert celery["services"]["airflow-init"]["user"] == "0:0"  # chowns the shared volumes


class TestHealthAndOrdering:
    @pytest.mark.parametrize("setup", ["base", "celery"])
    def test_every_long_running_service_has_a_health_check(self, setup: str, request: Any) -> None:
        project = request.getfixturevalue(setup)
        for name, service in project["services"].items():
            if name in ("airflow-init", "airflow-demo-setup"):
                assert service["restart"] == "no", name  # one-shot jobs
                continue
            check = service.get("healthcheck")
            assert check, name
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name
            assert service["restart"] == "always", name

    @pytest.mark.parametrize("setup", ["base", "celery"])
    def test_depends_on_conditions_are_valid_and_satisfiable(self, setup: str, request: Any) -> None:
        project = request.getfixturevalue(setup)
        services = project["services"]
        for name, service in services.items():
            for target, spec in service.get("depends_on", {}).items():
                assert target in services, f"{name} depends on unknown {target}"
                assert spec["condition"] in CONDITIONS, (name, target)
                if spec["condition"] == "service_healthy":
                    assert "healthcheck" in services[target], f"{name} waits for {target}'s health"
                if spec["condition"] == "service_completed_successfully":
                    assert services[target]["restart"] == "no", (name, target)
                # A service that is always on must not need one that only a profile starts.
                if not service.get("profiles"):
                    assert not services[target].get("profiles"), f"{name} needs profiled {target}"

    def test_airflow_components_wait_for_database_and_init(self, celery: dict[str, Any]) -> None:
        for name in AIRFLOW_SERVICES | {"airflow-worker", "airflow-demo-setup", "flower"}:
            depends = celery["services"][name]["depends_on"]
            assert depends["postgres"] == {"condition": "service_healthy"}, name
            assert depends["airflow-init"] == {"condition": "service_completed_successfully"}, name
        assert celery["services"]["airflow-init"]["depends_on"] == {
            "postgres": {"condition": "service_healthy"}
        }

    def test_no_dependency_cycle(self, celery: dict[str, Any]) -> None:
        services = celery["services"]
        done: set[str] = set()

        def visit(name: str, path: tuple[str, ...]) -> None:
            assert name not in path, f"cycle: {' -> '.join((*path, name))}"
            if name not in done:
                for target in services[name].get("depends_on", {}):
                    visit(target, (*path, name))
                done.add(name)

        for name in services:
            visit(name, ())

    def test_demo_setup_waits_for_parsed_dags_and_the_simulator(self, base: dict[str, Any]) -> None:
        depends = base["services"]["airflow-demo-setup"]["depends_on"]
        assert depends["airflow-dag-processor"] == {"condition": "service_healthy"}
        assert depends["simulator"] == {"condition": "service_healthy"}

    def test_health_endpoints(self, base: dict[str, Any]) -> None:
        services = base["services"]
        assert (
            "http://localhost:8080/api/v2/monitor/health"
            in services["airflow-apiserver"]["healthcheck"]["test"]
        )
        assert "http://localhost:8974/health" in services["airflow-scheduler"]["healthcheck"]["test"]
        assert (
            services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
        )
        for name, job in (
            ("airflow-dag-processor", "DagProcessorJob"),
            ("airflow-triggerer", "TriggererJob"),
        ):
            assert f"--job-type {job}" in services[name]["healthcheck"]["test"][1]
        assert "http://localhost:8765/_sim/counters" in services["simulator"]["healthcheck"]["test"]


class TestExecutors:
    def test_base_is_local_executor_everywhere(self, base: dict[str, Any]) -> None:
        for name in AIRFLOW_SERVICES | {"airflow-init", "airflow-demo-setup"}:
            environment = base["services"][name]["environment"]
            assert environment["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
            assert not any(key.startswith("AIRFLOW__CELERY__") for key in environment), name

    def test_celery_override_switches_every_component_together(self, celery: dict[str, Any]) -> None:
        for name in AIRFLOW_SERVICES | {"airflow-init", "airflow-demo-setup", "airflow-worker", "flower"}:
            environment = celery["services"][name]["environment"]
            assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
            assert environment["AIRFLOW__CELERY__BROKER_URL"] == "redis://:@redis:6379/0", name
            assert environment["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert celery["services"]["airflow-scheduler"]["depends_on"]["redis"] == {
            "condition": "service_healthy"
        }
        assert celery["services"]["airflow-worker"]["depends_on"]["redis"] == {"condition": "service_healthy"}

    def test_celery_setup_has_the_failover_settings_the_distributed_run_proves(
        self, celery: dict[str, Any]
    ) -> None:
        """A dead triggerer's streams and a dead worker's task move on within seconds, not minutes."""
        from tests.distributed.cluster import compose_celery_settings

        settings = compose_celery_settings()
        heartbeat = float(settings["AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC"])
        threshold = float(settings["AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD"])
        assert heartbeat * 5 <= threshold <= 30  # a live triggerer keeps its streams, a dead one loses them
        assert int(settings["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) < 300
        assert not any(key.startswith("AIRFLOW__CELERY__") for key in settings)  # the URLs stay local
        for name in AIRFLOW_SERVICES | {"airflow-worker"}:
            environment = celery["services"][name]["environment"]
            for key, value in settings.items():
                assert environment[key] == value, (name, key)

    def test_celery_setup_runs_two_triggerers_and_two_workers(self, celery: dict[str, Any]) -> None:
        assert celery["services"]["airflow-triggerer"]["deploy"]["replicas"] == 2
        assert celery["services"]["airflow-worker"]["deploy"]["replicas"] == 2
        assert celery["services"]["airflow-worker"]["command"] == "celery worker"
        assert "container_name" not in celery["services"]["airflow-triggerer"]  # replicas need none

    def test_worker_inherits_the_full_airflow_settings(
        self, base: dict[str, Any], celery: dict[str, Any]
    ) -> None:
        worker, scheduler = celery["services"]["airflow-worker"], base["services"]["airflow-scheduler"]
        for key in ("image", "build", "volumes", "user"):
            assert worker[key] == scheduler[key], key
        for key, value in scheduler["environment"].items():
            if key != "AIRFLOW__CORE__EXECUTOR":
                assert worker["environment"][key] == value, key

    def test_all_components_share_one_configuration(self, celery: dict[str, Any]) -> None:
        """Same metadata DB, config file (secret keys) and connections for every Airflow process."""
        shared = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONFIG", "AIRFLOW_CONN_UPSTOX_DEFAULT")
        airflow = [s for name, s in celery["services"].items() if _uses_our_image(s) and name != "simulator"]
        assert len(airflow) == 8
        for key in shared:
            assert len({service["environment"][key] for service in airflow}) == 1, key


class TestDatabases:
    def test_portfolio_store_is_a_separate_database(self, base: dict[str, Any]) -> None:
        environment = base["services"]["airflow-scheduler"]["environment"]
        metadata_url = environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        store = json.loads(environment["AIRFLOW_CONN_UPSTOX_DB"])
        assert metadata_url.endswith("@postgres/airflow")
        assert store["conn_type"] == "postgres"
        assert (store["host"], store["schema"], store["login"]) == ("postgres", "portfolio", "portfolio")
        assert environment["UPSTOX_SQL_CONN_ID"] == "upstox_db"

    def test_postgres_runs_the_portfolio_init_script(self, base: dict[str, Any]) -> None:
        postgres = base["services"]["postgres"]
        assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
        assert (DOCKER_DIR / "postgres-init" / "10-portfolio-db.sh").is_file()
        for key in ("PORTFOLIO_DB_NAME", "PORTFOLIO_DB_USER", "PORTFOLIO_DB_PASSWORD"):
            assert postgres["environment"][key] == "portfolio"
        # Healthy only over TCP, i.e. after the init scripts (the init server has no TCP listener).
        assert "-h 127.0.0.1" in postgres["healthcheck"]["test"][1]


class TestConnectionsAndToken:
    def test_upstox_connection_parses_in_airflow_and_in_the_provider(self, base: dict[str, Any]) -> None:
        from airflow.models.connection import Connection

        from airflow_provider_upstox.hooks.upstox import settings_from_connection

        raw = base["services"]["airflow-scheduler"]["environment"]["AIRFLOW_CONN_UPSTOX_DEFAULT"]
        conn = Connection.from_json(raw, conn_id="upstox_default")
        assert (conn.conn_type, conn.password, conn.host) == ("upstox", TOKEN, "http://simulator:8765")
        settings = settings_from_connection(
            conn_id="upstox_default",
            password=conn.password,
            host=conn.host,
            port=conn.port,
            extra=conn.extra_dejson,
        )
        assert settings.config.base_url == "http://simulator:8765"
        assert settings.config.timeout == 30.0
        assert settings.config.verify is True
        assert settings.update_types == ("order", "position", "holding", "gtt_order")

    def test_store_connection_parses_in_airflow(self, base: dict[str, Any]) -> None:
        from airflow.models.connection import Connection

        raw = base["services"]["airflow-scheduler"]["environment"]["AIRFLOW_CONN_UPSTOX_DB"]
        conn = Connection.from_json(raw, conn_id="upstox_db")
        assert (conn.conn_type, conn.host, conn.port, conn.schema) == (
            "postgres",
            "postgres",
            5432,
            "portfolio",
        )

    def test_real_account_settings_reach_the_connection(self) -> None:
        from airflow.models.connection import Connection

        env = {
            **ENV,
            "UPSTOX_BASE_URL": "https://api.upstox.com",
            "UPSTOX_UPDATE_TYPES": "order",
            "UPSTOX_VERIFY": "false",
            "UPSTOX_TIMEOUT": "12.5",
        }
        raw = load_project(BASE_FILE, env=env)["services"]["airflow-triggerer"]["environment"]
        conn = Connection.from_json(raw["AIRFLOW_CONN_UPSTOX_DEFAULT"], conn_id="upstox_default")
        assert conn.host == "https://api.upstox.com"
        assert conn.extra_dejson == {"update_types": "order", "timeout": "12.5", "verify": "false"}

    @pytest.mark.parametrize("value", [None, ""])
    def test_a_missing_token_stops_compose_with_a_hint(self, value: str | None) -> None:
        env = {} if value is None else {"UPSTOX_ACCESS_TOKEN": value}
        with pytest.raises(InterpolationError, match=r"UPSTOX_ACCESS_TOKEN.*\.env"):
            load_project(BASE_FILE, env=env)

    @pytest.mark.parametrize("path", [BASE_FILE, CELERY_FILE])
    def test_token_appears_only_where_the_variable_is_read(self, path: Any) -> None:
        """Interpolate with a sentinel token: it may only show up where ``UPSTOX_ACCESS_TOKEN`` was."""
        raw = load_raw(path)
        done = interpolate(raw, ENV)

        def walk(before: Any, after: Any, where: str) -> None:
            if isinstance(before, dict):
                for key in before:
                    walk(before[key], after[key], f"{where}.{key}")
            elif isinstance(before, list):
                for index, item in enumerate(before):
                    walk(item, after[index], f"{where}[{index}]")
            elif isinstance(after, str) and TOKEN in after:
                assert "${UPSTOX_ACCESS_TOKEN" in before, where

        walk(raw, done, path.name)

    def test_token_references_are_the_variable_and_nothing_else(self) -> None:
        raw = load_raw(BASE_FILE)
        connection = raw["x-airflow-common"]["environment"]["AIRFLOW_CONN_UPSTOX_DEFAULT"]
        assert re.search(r'"password": "\$\{UPSTOX_ACCESS_TOKEN:\?[^}]*\}"', connection)
        simulator = raw["services"]["simulator"]
        # The simulator reads UPSTOX_SIMULATOR_TOKEN: the token stays out of its command line.
        assert simulator["environment"]["UPSTOX_SIMULATOR_TOKEN"].startswith("${UPSTOX_ACCESS_TOKEN:?")
        assert not any("token" in word for word in simulator["command"] + simulator["entrypoint"])

    @pytest.mark.parametrize(
        "name",
        [
            "docker-compose.yaml",
            "docker-compose.celery.yaml",
            ".env.example",
            "Dockerfile",
            "install-provider.sh",
            "demo-setup.sh",
            "postgres-init/10-portfolio-db.sh",
        ],
    )
    def test_no_credential_is_written_in_the_files(self, name: str) -> None:
        text = (DOCKER_DIR / name).read_text()
        assert not re.search(r"eyJ[\w-]{10,}\.[\w-]{10,}", text), "a JWT (Upstox tokens are JWTs)"
        assert not re.search(r"--token[ =](?![\"']?\$)", text), "--token with a literal value"
        assert not re.search(r"(?i)bearer\s+[\w.-]{8,}", text), "an Authorization header value"
        assert not re.search(r"[?&](code|requestId)=\w", text), "an authorized stream URL"


class TestEnvExample:
    def _settings(self) -> dict[str, str]:
        settings = {}
        for line in (DOCKER_DIR / ".env.example").read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                settings[name] = value
        return settings

    def test_every_variable_the_compose_files_read_is_documented(self) -> None:
        used = variables_in(load_raw(BASE_FILE)) | variables_in(load_raw(CELERY_FILE))
        documented = set(self._settings())
        assert used - documented == set(), "read by compose, missing from .env.example"
        assert documented - used == set(), "in .env.example, read by nothing"

    def test_no_value_is_committed(self) -> None:
        """Empty means the compose default; secrets (token, passwords) must be the user's own."""
        assert {name: value for name, value in self._settings().items() if value} == {}

    def test_dotenv_is_ignored_by_git(self) -> None:
        assert ".env" in (DOCKER_DIR / ".gitignore").read_text().splitlines()


class TestInlineScripts:
    def test_init_job_script_is_valid_bash(self, base: dict[str, Any], tmp_path: Path) -> None:
        """The one script kept inline (it wraps the image's /entrypoint): syntax and shellcheck."""
        init = base["services"]["airflow-init"]
        assert init["entrypoint"] == "/bin/bash"
        assert init["command"][0] == "-c"
        script = tmp_path / "init.sh"
        script.write_text(init["command"][1])
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
        if Path(shellcheck).exists():
            result = subprocess.run(
                [shellcheck, "-s", "bash", str(script)], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, result.stdout
