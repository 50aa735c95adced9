"""The token plugin served by a real ``airflow api-server``, against the simulator over loopback.

Every forged delivery or callback gets a clear 4xx and leaves the connection untouched (same token
fingerprint, same renewal record); real ones write the new token. The api-server's log never shows
a token, the app secret or an authorization code.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from airflow_provider_upstox.hooks.upstox import token_fingerprint
from airflow_provider_upstox.simulator import RunningSimulator
from tests.plugins.conftest import APP, ENV_CONN_ID, PluginServer, approve_by_phone, sim_auth

pytestmark = [pytest.mark.airflow_server, pytest.mark.timeout(300)]

SECRETS_SEEN: set[str] = {APP["client_secret"]}


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_page_lists_connections_with_token_state(
    plugin_server: PluginServer, simulator: RunningSimulator
) -> None:
    plugin_server.add_connection("upstox_page_ok", simulator, simulator.token)
    plugin_server.add_connection("upstox_page_bad", simulator, "refused-token-" + "x" * 20)
    SECRETS_SEEN.update({simulator.token, "refused-token-" + "x" * 20})
    ok = plugin_server.state("upstox_page_ok", probe=True)
    assert ok["state"] == "valid"
    assert ok["user_id"] == "AB1234"
    assert ok["fingerprint"] == token_fingerprint(simulator.token)
    assert ok["valid_until"] > _now_ms()
    assert ok["refused_since"] is None
    bad = plugin_server.state("upstox_page_bad", probe=True)
    assert bad["state"] == "refused"
    assert bad["refused_since"] <= _now_ms()
    again = plugin_server.state("upstox_page_bad", probe=True)
    assert again["refused_since"] == bad["refused_since"]  # the first sighting is kept
    env = plugin_server.state(ENV_CONN_ID)
    assert "environment variable" in env["read_only_reason"]

    stored = plugin_server.http.get("/api/v2/connections/upstox_page_ok")
    assert APP["client_secret"] not in stored.text  # Airflow masks the "secret" key of the extra
    page = plugin_server.http.get("/upstox/tokens")
    assert page.status_code == 200
    assert "upstox_page_ok" in page.text
    assert "Log in to Upstox" in page.text
    assert simulator.token not in page.text
    assert APP["client_secret"] not in page.text


def test_phone_approval_writes_the_token(
    plugin_server: PluginServer, app_simulator: RunningSimulator
) -> None:
    sim = app_simulator
    plugin_server.add_connection("upstox_phone", sim, sim.token)
    before = plugin_server.state("upstox_phone")
    delivery = approve_by_phone(sim)
    assert delivery["status"] == 200, delivery
    after = plugin_server.state("upstox_phone", probe=True)
    assert after["fingerprint"] == sim_auth(sim)["token_fingerprint"] != before["fingerprint"]
    assert after["source"] == "notifier"
    assert after["state"] == "valid"


def _forge(plugin_server: PluginServer, payload: Any, **kwargs: Any) -> httpx.Response:
    return plugin_server.http.post(plugin_server.notifier_url(), json=payload, **kwargs)


def _payload(sim: RunningSimulator, token: str, **changes: Any) -> dict[str, Any]:
    now = _now_ms()
    base = {
        "client_id": APP["client_id"],
        "user_id": "AB1234",
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": str(now + 3_600_000),
        "issued_at": str(now),
        "message_type": "access_token",
    }
    return {**base, **changes}


def test_forged_deliveries_change_nothing(
    plugin_server: PluginServer, app_simulator: RunningSimulator
) -> None:
    sim = app_simulator
    plugin_server.add_connection("upstox_forged", sim, sim.token)
    assert approve_by_phone(sim)["status"] == 200
    before = plugin_server.state("upstox_forged")
    assert before["source"] == "notifier"
    forged_token = "forged-token-" + "f" * 24
    SECRETS_SEEN.add(forged_token)
    url = plugin_server.notifier_url()
    cases: list[tuple[str, int, httpx.Response]] = [
        ("wrong key", 404, plugin_server.http.post(url[:-4] + "AAAA", json=_payload(sim, forged_token))),
        ("wrong client", 404, _forge(plugin_server, _payload(sim, forged_token, client_id="other-app"))),
        ("wrong user", 404, _forge(plugin_server, _payload(sim, forged_token, user_id="ZZ9999"))),
        ("profile refuses", 403, _forge(plugin_server, _payload(sim, forged_token))),
        ("older issued_at", 409, _forge(plugin_server, _payload(sim, forged_token, issued_at="1000"))),
        ("wrong message_type", 422, _forge(plugin_server, _payload(sim, forged_token, message_type="x"))),
        ("expired", 422, _forge(plugin_server, _payload(sim, forged_token, expires_at="1000"))),
        ("not an object", 422, _forge(plugin_server, [1, 2])),
        (
            "malformed JSON",
            400,
            plugin_server.http.post(
                url, content=b'{"client_id": ', headers={"Content-Type": "application/json"}
            ),
        ),
        (
            "wrong content type",
            415,
            plugin_server.http.post(
                url, content=json.dumps(_payload(sim, forged_token)), headers={"Content-Type": "text/plain"}
            ),
        ),
        (
            "1 MB body",
            413,
            plugin_server.http.post(
                url, content=b"{" + b" " * 2**20 + b"}", headers={"Content-Type": "application/json"}
            ),
        ),
    ]
    for name, expected, answer in cases:
        assert answer.status_code == expected, (name, answer.status_code, answer.text)
        assert answer.json()["status"] == "error", name
        assert forged_token not in answer.text, name
    assert plugin_server.state("upstox_forged") == before


def test_a_valid_token_of_another_user_is_refused(
    plugin_server: PluginServer, app_simulator: RunningSimulator
) -> None:
    """The token works, but for the simulator's account, not the one the payload claims."""
    sim = app_simulator
    plugin_server.add_connection("upstox_other_user", sim, sim.token, user_id="CD5678")
    before = plugin_server.state("upstox_other_user")
    answer = _forge(plugin_server, _payload(sim, sim.token, user_id="CD5678"))
    assert answer.status_code == 403, answer.text
    assert "another user" in answer.json()["message"]
    assert plugin_server.state("upstox_other_user") == before


def test_env_connection_cannot_be_written(
    plugin_server: PluginServer, app_simulator: RunningSimulator
) -> None:
    start = plugin_server.http.post(f"/upstox/oauth/start/{ENV_CONN_ID}", follow_redirects=False)
    assert start.status_code == 409, start.text
    assert "environment variable" in start.json()["message"]


def _oauth_round_trip(
    plugin_server: PluginServer, sim: RunningSimulator, conn_id: str
) -> tuple[str, httpx.Response]:
    start = plugin_server.http.post(f"/upstox/oauth/start/{conn_id}", follow_redirects=False)
    assert start.status_code == 303, start.text
    dialog = start.headers["location"]
    assert dialog.startswith(f"{sim.base_url}/v2/login/authorization/dialog?")
    query = parse_qs(urlsplit(dialog).query)
    assert query["redirect_uri"] == [f"{plugin_server.base_url}/upstox/oauth/callback"]
    redirect = httpx.get(dialog, follow_redirects=False)
    assert redirect.status_code == 302
    callback = redirect.headers["location"]
    SECRETS_SEEN.add(parse_qs(urlsplit(callback).query)["code"][0])
    return callback, plugin_server.http.get(callback)


def test_oauth_login_writes_the_token_once(
    plugin_server: PluginServer, app_simulator: RunningSimulator
) -> None:
    sim = app_simulator
    plugin_server.add_connection("upstox_oauth", sim, "old-token-" + "o" * 20)
    callback, done = _oauth_round_trip(plugin_server, sim, "upstox_oauth")
    assert done.status_code == 200, done.text
    assert "Token renewed" in done.text
    after = plugin_server.state("upstox_oauth", probe=True)
    assert after["fingerprint"] == sim_auth(sim)["token_fingerprint"]
    assert (after["source"], after["state"], after["user_id"]) == ("oauth", "valid", "AB1234")

    replay = plugin_server.http.get(callback)
    assert replay.status_code == 409, replay.text
    assert "already used" in replay.text
    replayed = plugin_server.state("upstox_oauth")
    assert (replayed["fingerprint"], replayed["source"]) == (after["fingerprint"], "oauth")


def test_forged_callbacks_change_nothing(
    plugin_server: PluginServer, app_simulator: RunningSimulator
) -> None:
    sim = app_simulator
    plugin_server.add_connection("upstox_cb", sim, sim.token)
    before = plugin_server.state("upstox_cb")
    start = plugin_server.http.post("/upstox/oauth/start/upstox_cb", follow_redirects=False)
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    body, _, mac = state.rpartition(".")
    tampered = body.replace(body.split(".")[0], "dXBzdG94X290aGVy") + "." + mac  # another conn id
    for name, params, expected in [
        ("no state", {"code": "abc"}, 400),
        ("garbage state", {"code": "abc", "state": "x.y.z"}, 400),
        ("tampered state", {"code": "abc", "state": tampered}, 400),
        ("no code", {"state": state}, 400),
        ("unknown code", {"code": "not-a-code", "state": state}, 502),
        ("replayed state", {"code": "not-a-code", "state": state}, 409),
    ]:
        answer = plugin_server.http.get("/upstox/oauth/callback", params=params)
        assert answer.status_code == expected, (name, answer.status_code, answer.text)
    assert plugin_server.state("upstox_cb") == before


def test_logs_show_no_secret(plugin_server: PluginServer, airflow_env: Any) -> None:
    log = airflow_env.read_log(plugin_server.log_name)
    assert "Upstox notifier" in log  # the log is the one the deliveries went to
    for secret in SECRETS_SEEN:
        assert secret not in log


def test_a_burst_of_forged_deliveries_is_rate_limited(
    plugin_server: PluginServer, app_simulator: RunningSimulator
) -> None:
    """Last in the module: it empties the delivery bucket."""
    sim = app_simulator
    plugin_server.add_connection("upstox_burst", sim, sim.token)
    before = plugin_server.state("upstox_burst")
    requests_before = sim.control.state()["counters"]["http_requests"]
    payload = _payload(sim, "burst-token-" + "b" * 24)

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.post(plugin_server.notifier_url(), json=payload) for _ in range(1000))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert statuses.count(429) >= 985
    assert plugin_server.state("upstox_burst") == before
    profile_calls = sim.control.state()["counters"]["http_requests"] - requests_before
    assert profile_calls <= 20  # at most the bucket's worth reached Upstox
