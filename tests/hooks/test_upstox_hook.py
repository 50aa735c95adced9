"""``UpstoxHook`` against the simulator over real loopback HTTP, sync and async (``mode``).

Every failing call goes through ``guard.check``; at teardown ``guard`` asserts that neither the
token nor any stream ``code`` the simulator issued appears in an exception text, a ``repr`` or a
log record (caplog at DEBUG, httpx's own logs included).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from airflow_provider_upstox.exceptions import (
    UpstoxAuthenticationError,
    UpstoxMalformedResponseError,
    UpstoxRateLimitError,
    UpstoxServerError,
    UpstoxTransportError,
)
from airflow_provider_upstox.hooks.upstox import UpstoxHook
from tests.hooks.conftest import SecretsGuard, call, make_hook, set_connection

pytestmark = pytest.mark.usefixtures("conn_id")


def _deprecation_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "authorizedRedirectUri" in r.getMessage()
    ]


class TestAuthorize:
    @pytest.mark.parametrize("keys", ["both", "snake"])
    async def test_snake_case_key(
        self, sim: Any, mode: str, keys: str, guard: SecretsGuard, caplog: Any
    ) -> None:
        sim.control.authorize_keys(keys)
        uri = await call(make_hook(), mode, "authorize_portfolio_stream")
        assert uri.startswith("ws://127.0.0.1:")
        assert "code=" in uri
        assert not _deprecation_warnings(caplog)

    async def test_camel_case_only_falls_back_with_warning(
        self, sim: Any, mode: str, guard: SecretsGuard, caplog: Any
    ) -> None:
        sim.control.authorize_keys("camel")
        uri = await call(make_hook(), mode, "authorize_portfolio_stream", ["order"])
        assert uri.startswith("ws://")
        assert len(_deprecation_warnings(caplog)) == 1

    async def test_each_call_authorizes_anew(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        hook = make_hook()
        first = await call(hook, mode, "authorize_portfolio_stream")
        second = await call(hook, mode, "authorize_portfolio_stream")
        assert first != second  # single-use URLs: never cached

    async def test_uri_and_token_registered_with_the_secrets_masker(
        self, sim: Any, mode: str, guard: SecretsGuard
    ) -> None:
        from airflow.sdk._shared.secrets_masker import redact

        uri = await call(make_hook(), mode, "authorize_portfolio_stream")
        assert uri not in redact(f"connecting to {uri}")
        assert sim.token not in redact(f"token {sim.token}")
        (code,) = sim.control.issued_codes()["issued_codes"]
        path_and_query = uri[uri.index("/v2/") :]  # what a handshake error may show
        assert code not in redact(f"GET {path_and_query} failed")

    @pytest.mark.parametrize("bad", ["order,trades", ["position", "ORDERS"], "gtt"])
    async def test_invalid_update_types_rejected_before_any_request(
        self, sim: Any, mode: str, bad: Any, guard: SecretsGuard
    ) -> None:
        before = sim.control.counters()
        with pytest.raises(ValueError, match="valid values are order, position, holding, gtt_order") as info:
            await call(make_hook(), mode, "authorize_portfolio_stream", bad)
        guard.check(info.value)
        after = sim.control.counters()
        # the only request between the two reads is the first counters() call itself
        assert after["http_requests"] - before["http_requests"] == 1

    async def test_update_types_deduplicated(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        uri = await call(make_hook(), mode, "authorize_portfolio_stream", "holding,order, holding,order")
        assert uri.startswith("ws://")

    async def test_invalid_update_types_in_connection(
        self, sim: Any, mode: str, monkeypatch: pytest.MonkeyPatch, guard: SecretsGuard
    ) -> None:
        set_connection(
            monkeypatch, password=sim.token, host=sim.base_url, extra={"update_types": "order,bids"}
        )
        with pytest.raises(ValueError, match=r"update_types.*'bids'") as info:
            await call(make_hook(), mode, "authorize_portfolio_stream")
        guard.check(info.value)


class TestErrors:
    async def test_wrong_token_is_authentication_error_without_retry(
        self, sim: Any, mode: str, monkeypatch: pytest.MonkeyPatch, guard: SecretsGuard
    ) -> None:
        wrong = "wrong-token-0123456789abcdef"
        guard.extra_secrets.append(wrong)
        set_connection(monkeypatch, password=wrong, host=sim.base_url)
        before = sim.control.counters()["unauthorized"]
        with pytest.raises(UpstoxAuthenticationError) as info:
            await call(make_hook(), mode, "authorize_portfolio_stream")
        exc = guard.check(info.value)
        assert sim.control.counters()["unauthorized"] == before + 1  # exactly one attempt
        assert (exc.status_code, exc.error_code) == (401, "UDAPI100050")
        assert exc.path == "/v2/feed/portfolio-stream-feed/authorize"
        assert "invalid or expired" in str(exc)
        assert "03:30 India time" in str(exc)
        assert "generate a new one" in str(exc)

    async def test_injected_401_is_not_retried(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        sim.control.fail_authorize(401, count=2)
        hook = make_hook()
        for _ in range(2):  # a retry would have consumed both failures in the first call
            with pytest.raises(UpstoxAuthenticationError) as info:
                await call(hook, mode, "authorize_portfolio_stream")
            guard.check(info.value)
        assert (await call(hook, mode, "authorize_portfolio_stream")).startswith("ws://")

    async def test_429_then_success(self, sim: Any, mode: str, guard: SecretsGuard, caplog: Any) -> None:
        sim.control.fail_authorize(429, count=2)
        uri = await call(make_hook(), mode, "authorize_portfolio_stream")
        assert uri.startswith("ws://")
        retries = [r for r in caplog.records if "retrying" in r.getMessage()]
        assert len(retries) == 2
        assert "UDAPI10005" in retries[0].getMessage()

    async def test_retry_after_is_honoured(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        sim.control.fail_authorize(429, count=1, retry_after=0.6)
        started = time.monotonic()
        await call(make_hook(), mode, "authorize_portfolio_stream")
        assert time.monotonic() - started >= 0.6  # the base wait is zero: only Retry-After waited

    async def test_rate_limit_raised_when_attempts_run_out(
        self, sim: Any, mode: str, guard: SecretsGuard
    ) -> None:
        sim.control.fail_rest(429, count=10, retry_after=0)
        with pytest.raises(UpstoxRateLimitError) as info:
            await call(make_hook(max_attempts=2), mode, "get_positions")
        assert guard.check(info.value).retry_after == 0.0

    async def test_5xx_until_retries_run_out(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        sim.control.fail_authorize(503, count=100)
        before = sim.control.counters()["injected_http_errors"]
        with pytest.raises(UpstoxServerError) as info:
            await call(make_hook(max_attempts=3), mode, "authorize_portfolio_stream")
        exc = guard.check(info.value)
        assert exc.status_code == 503
        assert exc.path == "/v2/feed/portfolio-stream-feed/authorize"
        assert sim.control.counters()["injected_http_errors"] == before + 3

    async def test_total_retry_time_is_bounded(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        sim.control.fail_rest(429, count=100, retry_after=0.4)
        started = time.monotonic()
        with pytest.raises(UpstoxRateLimitError) as info:
            await call(make_hook(max_attempts=50, max_retry_seconds=1.0), mode, "get_holdings")
        guard.check(info.value)
        assert time.monotonic() - started < 2.5

    async def test_rest_5xx_then_success(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        sim.control.fail_rest(500, count=2)
        assert isinstance(await call(make_hook(), mode, "get_positions"), list)

    async def test_timeout(
        self, sim: Any, mode: str, monkeypatch: pytest.MonkeyPatch, guard: SecretsGuard
    ) -> None:
        set_connection(monkeypatch, password=sim.token, host=sim.base_url, extra={"timeout": "0.3"})
        sim.control.slow_responses(2.0)
        started = time.monotonic()
        with pytest.raises(UpstoxTransportError) as info:
            await call(make_hook(max_attempts=2), mode, "authorize_portfolio_stream")
        exc = guard.check(info.value)
        assert "timed out" in str(exc)
        assert exc.path == "/v2/feed/portfolio-stream-feed/authorize"
        assert time.monotonic() - started < 1.8  # two attempts of 0.3 s, not the 2 s answer

    async def test_unreachable_host(self, sim: Any, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
        from tests.fixtures.airflow_env import free_port

        set_connection(monkeypatch, password=sim.token, host=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(UpstoxTransportError, match="failed"):
            await call(make_hook(max_attempts=2), mode, "get_profile")


class TestMalformedAuthorize:
    @pytest.mark.parametrize(
        ("response", "match"),
        [
            ("not_json", "not JSON"),
            ("no_uri", "no 'authorized_redirect_uri'"),
            ("non_ws_uri", "not a WebSocket URL"),
            ("status_error", "status 'error'"),
        ],
    )
    async def test_malformed(
        self, sim: Any, mode: str, response: str, match: str, guard: SecretsGuard
    ) -> None:
        sim.control.set_faults(authorize_response=response)
        with pytest.raises(UpstoxMalformedResponseError, match=match) as info:
            await call(make_hook(), mode, "authorize_portfolio_stream")
        exc = guard.check(info.value)
        assert exc.path == "/v2/feed/portfolio-stream-feed/authorize"

    async def test_rejected_uri_is_still_masked(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        from airflow.sdk._shared.secrets_masker import redact

        sim.control.set_faults(authorize_response="non_ws_uri")
        with pytest.raises(UpstoxMalformedResponseError) as info:
            await call(make_hook(), mode, "authorize_portfolio_stream")
        guard.check(info.value)
        for code in sim.control.issued_codes()["issued_codes"]:
            assert code not in redact(f"code={code}")


class TestReads:
    async def test_account_id_is_profile_user_id(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        assert await call(make_hook(), mode, "get_account_id") == sim.control.state()["user_id"]

    @pytest.mark.parametrize(
        "name", ["get_order_book", "get_trades", "get_positions", "get_holdings", "get_gtt_orders"]
    )
    async def test_book_reads_return_lists(self, sim: Any, mode: str, name: str, guard: SecretsGuard) -> None:
        rows = await call(make_hook(), mode, name)
        assert isinstance(rows, list)
        assert all(isinstance(row, dict) for row in rows)

    async def test_order_reads_match_ground_truth(self, sim: Any, mode: str, guard: SecretsGuard) -> None:
        sim.control.step(30)
        state = sim.control.state()
        hook = make_hook()
        book = await call(hook, mode, "get_order_book")
        after = sim.control.state()  # the simulator may make an order between the two reads
        assert set(state["orders"]) <= {row["order_id"] for row in book} <= set(after["orders"])
        order_id = next(iter(state["orders"]))
        history = await call(hook, mode, "get_order_history", order_id)
        assert [row["status"] for row in history] == [
            m["status"] for m in state["orders"][order_id]["history"]
        ]
        details = await call(hook, mode, "get_order_details", order_id)
        assert details["order_id"] == order_id


class TestHook:
    def test_attributes(self) -> None:
        assert UpstoxHook.conn_name_attr == "upstox_conn_id"
        assert UpstoxHook.default_conn_name == "upstox_default"
        assert UpstoxHook().upstox_conn_id == "upstox_default"

    def test_repr_and_config_hide_token(self, sim: Any, conn_id: str) -> None:
        hook = make_hook()
        with hook.get_conn() as client:
            for text in (repr(hook), repr(client), repr(client.config), repr(hook.get_settings())):
                assert sim.token not in text

    async def test_async_client_resolves_connection_once(self, sim: Any, conn_id: str) -> None:
        hook = make_hook()
        first = await hook.aget_settings()
        assert await hook.aget_settings() is first
        async with await hook.aget_client() as client:
            assert client.config.base_url == sim.base_url.rstrip("/")
            assert client.config.timeout == 5.0

    def test_connection_ok(self, sim: Any, guard: SecretsGuard) -> None:
        assert make_hook().test_connection() == (True, f"Connected as {sim.control.state()['user_id']}")

    def test_connection_bad_token(
        self, sim: Any, monkeypatch: pytest.MonkeyPatch, guard: SecretsGuard
    ) -> None:
        set_connection(monkeypatch, password="expired-token-value-1234", host=sim.base_url)
        guard.extra_secrets.append("expired-token-value-1234")
        ok, message = make_hook().test_connection()
        assert not ok
        assert "invalid or expired" in message
        assert "UDAPI100050" in message

    def test_connection_unreachable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from tests.fixtures.airflow_env import free_port

        set_connection(monkeypatch, password="t0ken-value", host=f"http://127.0.0.1:{free_port()}")
        started = time.monotonic()
        ok, message = make_hook().test_connection()
        assert not ok
        assert "/v2/user/profile" in message
        assert time.monotonic() - started < 5  # one attempt, no backoff, for the UI's button


def test_readme_env_var_form_with_default_conn_id(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact form the issue and README give: ``AIRFLOW_CONN_UPSTOX_DEFAULT`` JSON, no extra."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_UPSTOX_DEFAULT",
        f'{{"conn_type": "upstox", "password": "{sim.token}", "host": "{sim.base_url}"}}',
    )
    hook = UpstoxHook(retry_wait=None)
    assert hook.get_account_id() == sim.control.state()["user_id"]
    assert hook.get_settings().update_types == ("order", "position", "holding", "gtt_order")


async def test_superseded_masker_regexes_leave_the_regex_cache(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A thousand accounts' tokens must not leave a thousand growing masker regexes in ``re``'s cache.

    Airflow's masker compiles one regex of all its values on each new one, through ``re.compile``,
    which caches every version (memory quadratic in the accounts). The hook empties the cache once
    per new token. ``re``'s cache is private: this test reads it only to see what is held.
    """
    import re
    import secrets

    tokens = [secrets.token_urlsafe(48) for _ in range(3)]
    for i, token in enumerate(tokens):
        conn_id = set_connection(
            monkeypatch, f"upstox_regex_{mode}_{i}", password=token, host="http://127.0.0.1:1"
        )
        hook = make_hook(conn_id)
        await (hook.aget_settings() if mode == "async" else asyncio.to_thread(hook.get_settings))
    cached = [
        key[1]
        for cache in (getattr(re, "_cache", {}), getattr(re, "_cache2", {}))
        for key in cache
        if isinstance(key, tuple) and len(key) > 1 and isinstance(key[1], str)
    ]
    assert not [pattern for pattern in cached if re.escape(tokens[0]) in pattern]
