"""Fixtures for the hook tests: an ``upstox`` connection to the simulator, a secrets guard."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import tenacity

from airflow_provider_upstox.hooks.upstox import UpstoxHook

CONN_ID = "upstox_sim"


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str = CONN_ID, **fields: Any) -> str:
    """Define *conn_id* the way the README tells users to: ``AIRFLOW_CONN_<ID>`` holding JSON."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "upstox", **fields}))
    return conn_id


@pytest.fixture
def sim(simulator: Any) -> Any:
    """The simulator with every fault switch off."""
    simulator.control.clear_faults()
    return simulator


@pytest.fixture
def conn_id(sim: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    return set_connection(monkeypatch, password=sim.token, host=sim.base_url, extra={"timeout": 5})


def make_hook(conn_id: str = CONN_ID, **options: Any) -> UpstoxHook:
    """A hook with zero retry delays (``Retry-After`` still applies)."""
    return UpstoxHook(conn_id, retry_wait=tenacity.wait_none(), **options)


async def call(hook: UpstoxHook, mode: str, name: str, *args: Any) -> Any:
    """``hook.<name>(*args)`` in a worker thread (sync mode) or ``await hook.a<name>(*args)``."""
    if mode == "sync":
        return await asyncio.to_thread(getattr(hook, name), *args)
    return await getattr(hook, f"a{name}")(*args)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class SecretsGuard:
    """Collects exceptions; at teardown checks them and every log record for the token and codes."""

    def __init__(self, sim: Any, caplog: pytest.LogCaptureFixture) -> None:
        self.sim = sim
        self.caplog = caplog
        self.exceptions: list[BaseException] = []
        self.extra_secrets: list[str] = []

    def check(self, exc: BaseException) -> BaseException:
        self.exceptions.append(exc)
        return exc

    def secrets(self) -> list[str]:
        codes = self.sim.control.issued_codes()["issued_codes"]
        return [self.sim.token, *codes, *self.extra_secrets]

    def verify(self) -> None:
        texts = [r.getMessage() for r in self.caplog.records]
        texts += [self.caplog.text]
        for exc in self.exceptions:
            texts += [str(exc), repr(exc), *(str(a) for a in exc.args)]
            cause = exc.__cause__
            if cause is not None:
                texts += [str(cause), repr(cause)]
        for secret in self.secrets():
            assert secret
            for text in texts:
                assert secret not in text, "a secret leaked into an exception or a log record"


@pytest.fixture
def guard(sim: Any, caplog: pytest.LogCaptureFixture) -> Iterator[SecretsGuard]:
    caplog.set_level(logging.DEBUG)
    g = SecretsGuard(sim, caplog)
    yield g
    g.verify()
