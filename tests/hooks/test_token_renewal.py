"""The hook's token renewal calls against the simulator (real loopback HTTP), secrets guarded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from airflow_provider_upstox.exceptions import (
    UpstoxAPIError,
    UpstoxAuthenticationError,
    UpstoxRateLimitError,
    UpstoxTransportError,
)
from airflow_provider_upstox.hooks.upstox import (
    is_token_refusal,
    login_app_from_extra,
    token_fingerprint,
)
from airflow_provider_upstox.triggers.token import UpstoxTokenRenewedTrigger
from tests.hooks.conftest import SecretsGuard, make_hook, set_connection

SECRET = "app-secret-" + "q" * 16
APP_EXTRA = {"timeout": 5, "client_id": "sim-client-id", "client_secret": SECRET, "user_id": "AB1234"}


@pytest.fixture
def app_conn(sim: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    httpx.post(f"{sim.base_url}/_sim/auth/config", params={"client_secret": f'"{SECRET}"'}).raise_for_status()
    return set_connection(monkeypatch, password=sim.token, host=sim.base_url, extra=APP_EXTRA)


def test_request_access_token(app_conn: str, sim: Any, guard: SecretsGuard) -> None:
    guard.extra_secrets.append(SECRET)
    before = time.time() * 1000
    request = make_hook(app_conn).request_access_token()
    assert request.authorization_expiry > before
    assert len(httpx.get(f"{sim.base_url}/_sim/auth").json()["pending"]) == 1


def test_request_with_a_wrong_secret_is_a_clear_error(
    sim: Any, monkeypatch: pytest.MonkeyPatch, guard: SecretsGuard
) -> None:
    wrong = "wrong-secret-" + "w" * 12
    guard.extra_secrets.append(wrong)
    extra = {**APP_EXTRA, "client_secret": wrong}
    conn_id = set_connection(monkeypatch, password=sim.token, host=sim.base_url, extra=extra)
    with pytest.raises(UpstoxAPIError) as info:
        make_hook(conn_id).request_access_token()
    guard.check(info.value)
    assert info.value.status_code == 401
    assert "API key, secret" in str(info.value)


def test_a_connection_without_app_cannot_renew(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_connection(monkeypatch, password=sim.token, host=sim.base_url)
    with pytest.raises(ValueError, match="client_id and client_secret missing"):
        make_hook(conn_id).request_access_token()


def test_exchange_code_and_profile_with_token(app_conn: str, sim: Any, guard: SecretsGuard) -> None:
    guard.extra_secrets.append(SECRET)
    dialog = httpx.get(
        f"{sim.base_url}/v2/login/authorization/dialog",
        params={"client_id": "sim-client-id", "redirect_uri": "http://cb.invalid/x", "response_type": "code"},
    )
    code = dialog.headers["location"].split("code=")[1]
    guard.extra_secrets.append(code)
    hook = make_hook(app_conn)
    with pytest.raises(UpstoxAPIError):  # redirect URI must be the one of the dialog
        hook.exchange_code(code)
    assert make_hook(app_conn).get_profile_with_token(sim.token)["user_id"] == "AB1234"


def test_exchange_code_writes_nothing_and_returns_the_token(
    sim: Any, monkeypatch: pytest.MonkeyPatch, guard: SecretsGuard
) -> None:
    httpx.post(f"{sim.base_url}/_sim/auth/config", params={"client_secret": f'"{SECRET}"'}).raise_for_status()
    extra = {**APP_EXTRA, "redirect_uri": "http://cb.invalid/x"}
    conn_id = set_connection(monkeypatch, password=sim.token, host=sim.base_url, extra=extra)
    dialog = httpx.get(
        f"{sim.base_url}/v2/login/authorization/dialog",
        params={"client_id": "sim-client-id", "redirect_uri": "http://cb.invalid/x", "response_type": "code"},
    )
    code = dialog.headers["location"].split("code=")[1]
    guard.extra_secrets += [SECRET, code]
    issued = make_hook(conn_id).exchange_code(code)
    assert issued.user_id == "AB1234"
    assert "access_token" not in repr(issued)
    assert (
        token_fingerprint(issued.access_token)
        == httpx.get(f"{sim.base_url}/_sim/auth").json()["token_fingerprint"]
    )
    with pytest.raises(UpstoxAuthenticationError):  # the old token is refused from now on
        make_hook(conn_id).get_profile_with_token(sim.token)


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (UpstoxAuthenticationError("x", status_code=401), True),
        (UpstoxAPIError("x", status_code=403), True),
        (UpstoxAPIError("x", status_code=400, error_code="UDAPI100050"), True),
        (UpstoxRateLimitError("x", status_code=429), False),
        (UpstoxAPIError("x", status_code=500), False),
        (UpstoxTransportError("x"), False),
        (ValueError("x"), False),
    ],
)
def test_is_token_refusal(exc: BaseException, refused: bool) -> None:
    assert is_token_refusal(exc) is refused


def test_login_app_from_extra_names_missing_fields() -> None:
    with pytest.raises(ValueError, match="extra client_secret missing"):
        login_app_from_extra("c", {"client_id": "k"})
    app = login_app_from_extra(
        "c", {"client_id": " k ", "client_secret": "very-secret-value", "redirect_uri": "http://x"}
    )
    assert (app.client_id, app.client_secret, app.redirect_uri) == ("k", "very-secret-value", "http://x")
    assert "very-secret-value" not in repr(app)


async def test_fingerprint_follows_the_connection(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_connection(monkeypatch, password=sim.token, host=sim.base_url)
    hook = make_hook(conn_id)
    assert await hook.atoken_fingerprint() == token_fingerprint(sim.token)
    set_connection(monkeypatch, conn_id, password="another-token-" + "a" * 20, host=sim.base_url)
    assert await hook.atoken_fingerprint() == token_fingerprint("another-token-" + "a" * 20)
    assert hook.token_fingerprint() != token_fingerprint(sim.token)
    assert token_fingerprint(None) is None
    assert token_fingerprint("  ") is None


class TestTokenRenewedTrigger:
    def test_serialize_has_no_secret(self) -> None:
        trigger = UpstoxTokenRenewedTrigger("c", 1, 2, "abcd", 0.5)
        classpath, kwargs = trigger.serialize()
        assert classpath == "airflow_provider_upstox.triggers.token.UpstoxTokenRenewedTrigger"
        assert kwargs == {
            "upstox_conn_id": "c",
            "requested_at": 1,
            "authorization_expiry": 2,
            "previous_fingerprint": "abcd",
            "poll_interval": 0.5,
        }

    async def test_fires_when_the_token_changes(self, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        conn_id = set_connection(monkeypatch, password=sim.token, host=sim.base_url)
        now = int(time.time() * 1000)
        trigger = UpstoxTokenRenewedTrigger(conn_id, now, now + 60_000, token_fingerprint(sim.token), 0.05)
        task = asyncio.create_task(trigger.run().__anext__())
        await asyncio.sleep(0.3)
        assert not task.done()  # same token: still waiting
        set_connection(monkeypatch, conn_id, password="renewed-token-" + "r" * 20, host=sim.base_url)
        event = await asyncio.wait_for(task, 5)
        assert event.payload == {"status": "renewed", "issued_at": None}

    async def test_ignores_a_record_older_than_the_request(
        self, sim: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        new = "renewed-token-" + "r" * 20
        now = int(time.time() * 1000)
        old_record = {"renewal": {"fingerprint": token_fingerprint(new), "issued_at": now - 3_600_000}}
        conn_id = set_connection(monkeypatch, password=new, host=sim.base_url, extra=old_record)
        trigger = UpstoxTokenRenewedTrigger(conn_id, now, now + 300, "previous", 0.05)
        event = await asyncio.wait_for(trigger.run().__anext__(), 5)
        assert event.payload == {"status": "expired"}

    async def test_expires(self, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        conn_id = set_connection(monkeypatch, password=sim.token, host=sim.base_url)
        now = int(time.time() * 1000)
        trigger = UpstoxTokenRenewedTrigger(conn_id, now, now + 200, token_fingerprint(sim.token), 0.05)
        started = time.monotonic()
        event = await asyncio.wait_for(trigger.run().__anext__(), 5)
        assert event.payload == {"status": "expired"}
        assert 0.15 < time.monotonic() - started < 2
