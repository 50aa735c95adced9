"""A real ``airflow api-server`` with the token plugin, and a simulator playing Upstox's login side.

The api-server (one per module) loads the plugin through its ``airflow.plugins`` entry point, with
``simple_auth_manager_all_admins`` (every request an admin's). Connections are created through
Airflow's REST API and inspected through the plugin's JSON (fingerprints, never tokens) and the
metadata DB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from airflow_provider_upstox.client import login
from airflow_provider_upstox.client.login import IST
from airflow_provider_upstox.simulator import RunningSimulator

ENV_CONN_ID = "upstox_env_only"
APP = {"client_id": "sim-client-id", "client_secret": "sim-client-secret-" + "s" * 12}


@dataclass
class PluginServer:
    base_url: str
    http: httpx.Client
    log_name: str
    created: list[str] = field(default_factory=list)

    def state(self, conn_id: str, probe: bool = False) -> dict[str, Any]:
        answer = self.http.get("/upstox/api/connections", params={"probe": str(probe).lower()})
        assert answer.status_code == 200, answer.text
        rows = {row["conn_id"]: row for row in answer.json()["connections"]}
        return rows[conn_id]  # type: ignore[no-any-return]

    def add_connection(self, conn_id: str, sim: RunningSimulator, token: str, **extra: Any) -> None:
        create_connection(self.http, conn_id, sim, token, **extra)
        self.created.append(conn_id)

    def delete_created(self) -> None:
        """Connections of one test would otherwise share the app and user with the next test's."""
        while self.created:
            self.http.delete(f"/api/v2/connections/{self.created.pop()}")

    def notifier_url(self) -> str:
        return notifier_url(self.base_url)


def notifier_url(api_server_url: str) -> str:
    """The plugin's notifier endpoint on the api-server at *api_server_url*."""
    from airflow_provider_upstox.plugins.keys import notifier_key

    return f"{api_server_url}/upstox/notifier/{notifier_key()}"


def create_connection(
    http: httpx.Client, conn_id: str, sim: RunningSimulator, token: str, user_id: str = "AB1234", **extra: Any
) -> None:
    """(Re)create an ``upstox`` connection of the app :data:`APP` in the metadata DB (REST API)."""
    http.delete(f"/api/v2/connections/{conn_id}")
    body = {
        "connection_id": conn_id,
        "conn_type": "upstox",
        "host": sim.base_url,
        "password": token,
        "extra": json.dumps({**APP, "user_id": user_id, **extra}),
    }
    answer = http.post("/api/v2/connections", json=body)
    assert answer.status_code == 201, answer.text


def configure_app(sim: RunningSimulator, api_server_url: str, **overrides: Any) -> None:
    """Make *sim* the app of :data:`APP`, posting approvals to the plugin on *api_server_url*."""
    settings = {**APP, "notifier_url": notifier_url(api_server_url), "expire_daily_at": far_daily_expiry()}
    answer = sim_control(sim, "config", **{**settings, **overrides})
    assert answer.status_code == 200, answer.text


def far_daily_expiry() -> str:
    """A time of day 12 hours away (India time): issued tokens do not expire during a test run."""
    return (datetime.now(IST) + timedelta(hours=12)).strftime("%H:%M")


@pytest.fixture(scope="module")
def plugin_server(airflow_env: Any) -> Iterator[PluginServer]:
    env_conn = json.dumps({"conn_type": "upstox", "host": "http://127.0.0.1:9", "password": "env-token-xyz"})
    log_name = f"api-server-token-plugin-{int(time.time())}"
    with (
        airflow_env.api_server(
            log_name=log_name, extra_env={f"AIRFLOW_CONN_{ENV_CONN_ID.upper()}": env_conn}
        ) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
    ):
        yield PluginServer(base_url, http, log_name)


@pytest.fixture(autouse=True)
def _fresh_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "plugin_server" in request.fixturenames:
        request.getfixturevalue("plugin_server").delete_created()


@pytest.fixture
def app_simulator(simulator: RunningSimulator, plugin_server: PluginServer) -> RunningSimulator:
    """The simulator configured as the app of :data:`APP`, posting approvals to the plugin."""
    configure_app(simulator, plugin_server.base_url)
    return simulator


def sim_auth(sim: RunningSimulator) -> dict[str, Any]:
    return httpx.get(f"{sim.base_url}/_sim/auth").json()  # type: ignore[no-any-return]


def sim_control(sim: RunningSimulator, name: str, **params: Any) -> httpx.Response:
    return httpx.post(
        f"{sim.base_url}/_sim/auth/{name}", params={k: json.dumps(v) for k, v in params.items()}, timeout=30
    )


def approve_by_phone(sim: RunningSimulator) -> dict[str, Any]:
    """The DAG's token request and the user's approval: Upstox POSTs to the notifier."""
    app = login.LoginApp(APP["client_id"], APP["client_secret"])
    login.parse_token_request(login.send(login.token_request_request(sim.base_url, app)))
    answer = sim_control(sim, "approve")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]
