"""Retry policy: what is retried, how long it waits, and the clients without Airflow (simulator)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import tenacity

from airflow_provider_upstox.client import AsyncUpstoxClient, UpstoxClient, UpstoxClientConfig, is_retryable
from airflow_provider_upstox.client.retry import RetryAfterWait, default_wait, retry_options
from airflow_provider_upstox.exceptions import (
    UpstoxAPIError,
    UpstoxAuthenticationError,
    UpstoxMalformedResponseError,
    UpstoxRateLimitError,
    UpstoxServerError,
    UpstoxTransportError,
)


def _transport_error(cause: BaseException) -> UpstoxTransportError:
    try:
        raise UpstoxTransportError("x", path="/p") from cause
    except UpstoxTransportError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (UpstoxRateLimitError("r", status_code=429), True),
        (UpstoxServerError("s", status_code=502), True),
        (_transport_error(httpx.ReadTimeout("t")), True),
        (_transport_error(httpx.ConnectTimeout("t")), True),
        (_transport_error(httpx.ConnectError("refused")), True),
        (_transport_error(httpx.RemoteProtocolError("eof")), True),
        (_transport_error(httpx.UnsupportedProtocol("ftp")), False),
        (UpstoxTransportError("no cause"), False),
        (UpstoxAuthenticationError("a", status_code=401), False),
        (UpstoxAuthenticationError("a", status_code=403), False),
        (UpstoxMalformedResponseError("m", status_code=200), False),
        (UpstoxAPIError("bad request", status_code=400), False),
        (ValueError("x"), False),
    ],
)
def test_is_retryable(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def _state(exc: BaseException | None, attempt: int = 1) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if exc is not None:
        state.set_exception((type(exc), exc, None))
    return state


class TestWaits:
    CONFIG = UpstoxClientConfig(access_token="t", initial_backoff=0.5, max_backoff=4.0, max_retry_after=10)

    def test_default_wait_is_capped_exponential_with_jitter(self) -> None:
        wait = default_wait(self.CONFIG)
        samples = {n: [wait(_state(None, n)) for _ in range(200)] for n in (1, 2, 3, 8)}
        assert all(0.5 <= s <= 1.0 for s in samples[1])
        assert all(1.0 <= s <= 1.5 for s in samples[2])
        assert all(2.0 <= s <= 2.5 for s in samples[3])
        assert all(4.0 <= s <= 4.5 for s in samples[8])  # capped (plus jitter)
        assert len(set(samples[1])) > 100  # jittered, not constant

    def test_retry_after_is_a_lower_bound_and_capped(self) -> None:
        wait = RetryAfterWait(tenacity.wait_fixed(1.0), cap=10)
        assert wait(_state(UpstoxRateLimitError("r", retry_after=3.0))) == 3.0
        assert wait(_state(UpstoxRateLimitError("r", retry_after=0.2))) == 1.0
        assert wait(_state(UpstoxRateLimitError("r", retry_after=3600))) == 10
        assert wait(_state(UpstoxRateLimitError("r"))) == 1.0
        assert wait(_state(UpstoxServerError("s"))) == 1.0

    def test_attempts_and_total_time_bounded(self) -> None:
        opts = retry_options(self.CONFIG.replace(max_attempts=3, max_retry_seconds=5))
        assert opts["reraise"] is True
        state = _state(UpstoxServerError("s"), attempt=3)
        assert opts["stop"](state)  # third attempt was the last
        state = _state(UpstoxServerError("s"), attempt=1)
        state.upcoming_sleep = 6.0
        assert opts["stop"](state)  # the next wait would end after max_retry_seconds


@pytest.fixture
def config(simulator: Any) -> UpstoxClientConfig:
    simulator.control.clear_faults()
    return UpstoxClientConfig(base_url=simulator.base_url, access_token=simulator.token, timeout=5)


class TestClientsWithoutAirflow:
    def test_sync_client_calls_on_secret_before_returning(
        self, simulator: Any, config: UpstoxClientConfig
    ) -> None:
        seen: list[str] = []
        with UpstoxClient(config, on_secret=seen.append) as client:
            uri = client.authorize_portfolio_stream("order")
        assert seen == [uri]

    async def test_async_client_awaits_async_on_secret(
        self, simulator: Any, config: UpstoxClientConfig
    ) -> None:
        seen: list[str] = []

        async def remember(uri: str) -> None:
            seen.append(uri)

        async with AsyncUpstoxClient(config, on_secret=remember) as client:
            uri = await client.authorize_portfolio_stream(["position", "order"])
        assert seen == [uri]

    def test_injected_wait_strategy_is_used(self, simulator: Any, config: UpstoxClientConfig) -> None:
        simulator.control.fail_rest(503, count=2)
        started = time.monotonic()
        with UpstoxClient(config, retry_wait=tenacity.wait_fixed(0.25)) as client:
            assert client.get_profile()["user_id"]
        assert 0.5 <= time.monotonic() - started < 3

    async def test_default_backoff_waits(self, simulator: Any, config: UpstoxClientConfig) -> None:
        simulator.control.fail_rest(500, count=1)
        started = time.monotonic()
        async with AsyncUpstoxClient(config.replace(initial_backoff=0.2, max_backoff=1)) as client:
            await client.get_holdings()
        assert time.monotonic() - started >= 0.2
