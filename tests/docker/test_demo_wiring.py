"""The demo profile's wiring, run for real without containers.

The ``simulator`` service's entrypoint, command and environment (as Compose would interpolate them
from ``.env``) start a real simulator process here; its health check URL must answer; then the
``upstox_default`` connection string that every Airflow container gets, parsed by Airflow and turned
into a client by the provider, must authenticate against it. Only the host differs from the
containers: ``simulator:8765`` becomes ``127.0.0.1:<free port>`` (tests never use fixed ports).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_upstox.exceptions import UpstoxAuthenticationError
from tests.docker.compose_model import BASE_FILE, load_project
from tests.fixtures.airflow_env import free_port

TOKEN = "demo-token-1b2c3d"


def _localize(words: list[str], port: int) -> list[str]:
    return [
        word.replace("--host=0.0.0.0", "--host=127.0.0.1").replace("--port=8765", f"--port={port}")
        for word in words
    ]


@pytest.fixture(scope="module")
def running_simulator() -> Iterator[tuple[str, dict[str, Any]]]:
    """The simulator started exactly as the compose service says; yields (base URL, service)."""
    service = load_project(BASE_FILE, env={"UPSTOX_ACCESS_TOKEN": TOKEN})["services"]["simulator"]
    port = free_port()
    entrypoint = service["entrypoint"]
    assert entrypoint[0] == "python"
    argv = [sys.executable, *entrypoint[1:], *_localize(service["command"], port)]
    env = {**os.environ, **{key: str(value) for key, value in service["environment"].items()}}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    health_url = service["healthcheck"]["test"][-1].replace("localhost:8765", f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "simulator health check never passed"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", service
    finally:
        proc.terminate()  # the simulator stops on SIGTERM (what `docker compose down` sends)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail("simulator ignored SIGTERM")


def _client_from_compose(base_url: str, token: str) -> Any:
    from airflow.models.connection import Connection

    from airflow_provider_upstox.client import UpstoxClient
    from airflow_provider_upstox.hooks.upstox import settings_from_connection

    env = {"UPSTOX_ACCESS_TOKEN": token, "UPSTOX_BASE_URL": base_url}
    raw = load_project(BASE_FILE, env=env)["services"]["airflow-triggerer"]["environment"]
    conn = Connection.from_json(raw["AIRFLOW_CONN_UPSTOX_DEFAULT"], conn_id="upstox_default")
    settings = settings_from_connection(
        conn_id="upstox_default",
        password=conn.password,
        host=conn.host,
        port=conn.port,
        extra=conn.extra_dejson,
    )
    return UpstoxClient(settings.config)


@pytest.mark.timeout(120)
def test_compose_connection_authenticates_against_the_compose_simulator(
    running_simulator: tuple[str, dict[str, Any]],
) -> None:
    base_url, _ = running_simulator
    with _client_from_compose(base_url, TOKEN) as client:
        assert client.get_profile()["user_id"]
        url = client.authorize_portfolio_stream()
    # The stream URL is built from the Host the client used, so in compose it is ws://simulator:8765.
    assert url.startswith(f"ws://127.0.0.1:{base_url.rsplit(':', 1)[1]}/")


@pytest.mark.timeout(120)
def test_another_token_is_refused(running_simulator: tuple[str, dict[str, Any]]) -> None:
    base_url, _ = running_simulator
    with (
        _client_from_compose(base_url, "not-the-demo-token") as client,
        pytest.raises(UpstoxAuthenticationError),
    ):
        client.get_profile()
