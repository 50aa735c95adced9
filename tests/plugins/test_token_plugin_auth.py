"""The plugin behind Airflow's own login: a real api-server with the simple auth manager's users.

Nobody logged in gets 401; a viewer (who may not read connections) sees no connection and may not
start a login (403); an operator may; a callback carrying the operator's state but presented by
another user is refused (403) and changes nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from airflow_provider_upstox.simulator import RunningSimulator
from tests.plugins.conftest import APP

pytestmark = [pytest.mark.airflow_server, pytest.mark.timeout(300)]


def _token(http: httpx.Client, passwords: dict[str, str], user: str) -> dict[str, str]:
    answer = http.post("/auth/token", json={"username": user, "password": passwords[user]})
    assert answer.status_code in (200, 201), answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_only_connection_editors_may_log_in(
    airflow_env: Any, simulator: RunningSimulator, tmp_path: Path
) -> None:
    passwords_file = tmp_path / "passwords.json"
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "operator:op,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
    }
    log_name = f"api-server-token-auth-{int(time.time())}"
    with (
        airflow_env.api_server(log_name=log_name, extra_env=env) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
    ):
        passwords = json.loads(passwords_file.read_text())
        operator, viewer = _token(http, passwords, "operator"), _token(http, passwords, "viewer")
        body = {
            "connection_id": "upstox_guarded",
            "conn_type": "upstox",
            "host": simulator.base_url,
            "password": simulator.token,
            "extra": json.dumps({**APP, "user_id": "AB1234"}),
        }
        http.delete("/api/v2/connections/upstox_guarded", headers=operator)
        assert http.post("/api/v2/connections", json=body, headers=operator).status_code == 201

        for path in ("/upstox/tokens", "/upstox/api/connections", "/upstox/oauth/callback?code=x&state=y",
                     "/upstox/streams", "/upstox/api/streams"):  # fmt: skip
            assert http.get(path).status_code == 401, path
        assert http.post("/upstox/oauth/start/upstox_guarded").status_code == 401

        seen_by_viewer = http.get("/upstox/api/connections", headers=viewer, params={"probe": "false"})
        assert seen_by_viewer.status_code == 200
        assert seen_by_viewer.json()["connections"] == []
        assert "/upstox/notifier/" not in http.get("/upstox/tokens", headers=viewer).text
        # the Streams view shows only connections the user may read
        assert http.get("/upstox/api/streams", headers=viewer).json()["streams"] == []
        streams = http.get("/upstox/api/streams", headers=operator).json()["streams"]
        assert [(s["conn_id"], s["health"]) for s in streams] == [("upstox_guarded", "no stream")]
        refused = http.post("/upstox/oauth/start/upstox_guarded", headers=viewer, follow_redirects=False)
        assert refused.status_code == 403

        rows = http.get("/upstox/api/connections", headers=operator, params={"probe": "false"}).json()
        (row,) = [r for r in rows["connections"] if r["conn_id"] == "upstox_guarded"]
        assert row["editable"] is True
        start = http.post("/upstox/oauth/start/upstox_guarded", headers=operator, follow_redirects=False)
        assert start.status_code == 303, start.text
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        dialog = httpx.get(start.headers["location"], follow_redirects=False)
        code = parse_qs(urlsplit(dialog.headers["location"]).query)["code"][0]
        stolen = http.get("/upstox/oauth/callback", params={"code": code, "state": state}, headers=viewer)
        assert stolen.status_code == 403, stolen.text
        assert "another user" in stolen.text
        after = http.get("/upstox/api/connections", headers=operator, params={"probe": "false"}).json()
        assert [r for r in after["connections"] if r["conn_id"] == "upstox_guarded"] == [row]
        http.delete("/api/v2/connections/upstox_guarded", headers=operator)
