"""The connection form and the Test button, through a real ``airflow api-server``.

One api-server per module (startup takes seconds). ``simple_auth_manager_all_admins`` (set by the
``airflow_env`` fixture) makes every request an admin's, so no login is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.airflow_server


@pytest.fixture(scope="module")
def api(airflow_env: Any) -> Iterator[httpx.Client]:
    with (
        airflow_env.api_server(log_name="api-server-upstox-form") as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def upstox_meta(api: httpx.Client) -> dict[str, Any]:
    response = api.get("/ui/connections/hook_meta")
    assert response.status_code == 200, response.text
    by_type = {meta["connection_type"]: meta for meta in response.json()}
    assert "upstox" in by_type, sorted(by_type)
    return by_type["upstox"]  # type: ignore[no-any-return]


def test_hook_meta_names_the_hook(upstox_meta: dict[str, Any]) -> None:
    assert upstox_meta["hook_name"] == "Upstox"
    assert upstox_meta["hook_class_name"] == "airflow_provider_upstox.hooks.upstox.UpstoxHook"


def test_hook_meta_standard_fields(upstox_meta: dict[str, Any]) -> None:
    std = upstox_meta["standard_fields"]
    assert std["password"]["title"] == "Access token"
    assert std["host"]["title"] == "Base URL"
    assert std["host"]["placeholder"] == "https://api.upstox.com"
    for hidden in ("login", "port", "url_schema"):
        assert std[hidden]["hidden"] is True, hidden
    assert not std["password"]["hidden"]
    assert not std["host"]["hidden"]


def test_hook_meta_extra_fields(upstox_meta: dict[str, Any]) -> None:
    extra = upstox_meta["extra_fields"]
    assert set(extra) == {
        "update_types", "timeout", "verify", "client_id", "client_secret", "redirect_uri", "user_id",
    }  # fmt: skip
    assert extra["client_secret"]["schema"]["format"] == "password"  # a password input in the form
    assert extra["update_types"]["schema"]["title"] == "Update types"
    assert extra["update_types"]["value"] == "order,position,holding,gtt_order"
    assert extra["timeout"]["schema"]["title"] == "Timeout (seconds)"
    assert extra["verify"]["schema"]["title"] == "Verify TLS certificate"
    assert extra["verify"]["value"] is True


def _test_connection(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"connection_id": "upstox_ui_test", "conn_type": "upstox", **fields}
    response = api.post("/api/v2/connections/test", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_test_button_succeeds_against_the_simulator(api: httpx.Client, simulator: Any) -> None:
    user_id = simulator.control.state()["user_id"]
    result = _test_connection(api, host=simulator.base_url, password=simulator.token)
    assert result == {"status": True, "message": f"Connected as {user_id}"}


def test_test_button_reports_a_bad_token_clearly(api: httpx.Client, simulator: Any) -> None:
    bad_token = "not-the-token-" + "x" * 20
    result = _test_connection(api, host=simulator.base_url, password=bad_token)
    assert result["status"] is False
    message = result["message"]
    assert "invalid or expired" in message
    assert "03:30" in message
    assert "UDAPI100050" in message
    assert bad_token not in message


def test_test_button_reports_a_missing_token(api: httpx.Client, simulator: Any) -> None:
    result = _test_connection(api, host=simulator.base_url)
    assert result["status"] is False
    assert "no access token" in result["message"]


def test_test_button_honours_extra_fields(api: httpx.Client, simulator: Any) -> None:
    result = _test_connection(
        api, host=simulator.base_url, password=simulator.token, extra='{"update_types": "order,bogus"}'
    )
    assert result["status"] is False
    assert "bogus" in result["message"]
    assert "valid values are order, position, holding, gtt_order" in result["message"]
