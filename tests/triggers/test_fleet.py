"""Many streams in one process: no masker growth per connect, one HTTP pool, no reconnect herd.

Real parts: the simulator over loopback with one account per stream (``accounts=``), triggers
driven as the triggerer drives them, Airflow's own secrets masker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import secrets
import time
from typing import Any

import pytest

from airflow_provider_upstox.client import AsyncUpstoxClient, UpstoxClientConfig
from airflow_provider_upstox.client.aio import shared_http_clients
from airflow_provider_upstox.simulator import run_simulator_in_thread
from airflow_provider_upstox.stream import backoff
from airflow_provider_upstox.triggers.handoff import registry
from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger


def _masker_patterns() -> int:
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    return len(_secrets_masker().patterns)


@pytest.fixture
def fleet_sim(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A simulator with 20 accounts, one ``upstox_fleet_<i>`` connection each."""
    token = f"fleet-{secrets.token_urlsafe(16)}"
    extra = {f"{token}-{i}": f"SIM{i:05d}" for i in range(1, 20)}
    with run_simulator_in_thread(token, scenario="quiet", accounts=extra, ping_interval=1.0) as sim:
        for i, t in enumerate([token, *extra]):
            conn = {"conn_type": "upstox", "password": t, "host": sim.base_url}
            monkeypatch.setenv(f"AIRFLOW_CONN_UPSTOX_FLEET_{i}", json.dumps(conn))
        yield sim


async def _run_fleet(n: int, until: Any, timeout: float = 60.0) -> dict[int, list[dict[str, Any]]]:
    """*n* watch-mode triggers, each in its own task, until ``until(events)`` holds."""
    events: dict[int, list[dict[str, Any]]] = {i: [] for i in range(n)}

    async def drive(i: int) -> None:
        trigger = UpstoxPortfolioStreamTrigger(upstox_conn_id=f"upstox_fleet_{i}", mode="watch")
        agen = trigger.run()
        try:
            async for event in agen:
                events[i].append(event.payload)
        finally:
            await agen.aclose()
            await trigger.cleanup()

    tasks = [asyncio.create_task(drive(i)) for i in range(n)]
    try:
        deadline = time.monotonic() + timeout
        while not until(events):
            assert time.monotonic() < deadline, {i: len(e) for i, e in events.items()}
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return events


def _epochs_at_least(events: dict[int, list[dict[str, Any]]], epoch: int) -> bool:
    return all(e and e[-1]["stats"]["connection"] >= epoch for e in events.values())


async def test_reconnects_do_not_grow_the_masker_and_never_log_the_url(
    fleet_sim: Any, caplog: pytest.LogCaptureFixture, fast_trigger: Any, clean_registry: None
) -> None:
    """Every connect authorizes a new single-use URL: none is added to the process-wide masker,
    and none (nor its code) appears in any log record, even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    control = fleet_sim.control
    n = 5
    seen: dict[str, Any] = {"epoch": 1}

    def connected_then_reconnected(events: dict[int, list[dict[str, Any]]]) -> bool:
        """Once all are on connection k, drop them all; done when all are on connection 4."""
        if not _epochs_at_least(events, seen["epoch"]):
            return False
        seen.setdefault("masks", _masker_patterns())  # every token masked by now
        if seen["epoch"] == 4:
            return True
        control.disconnect(1011)
        seen["epoch"] += 1
        return False

    await _run_fleet(n, connected_then_reconnected)
    assert _masker_patterns() == seen["masks"]  # 3+ reconnects x 5 streams: not one pattern more
    codes = control.issued_codes()["issued_codes"]
    assert len(codes) >= 3 * n
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not [c for c in codes if c in text]
    assert set(re.findall(r"code=([^&\s]*)", text)) <= {"***"}  # websockets' DEBUG lines, redacted


async def test_triggers_share_one_http_client(fleet_sim: Any, clean_registry: None) -> None:
    before = shared_http_clients()
    seen: dict[str, int] = {}

    def all_up(events: dict[int, list[dict[str, Any]]]) -> bool:
        if _epochs_at_least(events, 1):
            seen["during"] = shared_http_clients()
            return True
        return False

    await _run_fleet(8, all_up)
    assert seen["during"] == before + 1  # eight streams, each with its REST client: one pool
    await registry.aclose_all()  # the cancelled triggers' streams close in the background
    assert shared_http_clients() == before  # the last client closed it


async def test_shared_client_is_per_loop_and_closed_with_its_last_user(fleet_sim: Any) -> None:
    config = UpstoxClientConfig(base_url=fleet_sim.base_url, access_token=fleet_sim.token)
    a, b = AsyncUpstoxClient(config), AsyncUpstoxClient(config.replace(timeout=7.0))
    assert a._http is b._http  # different timeouts, one pool (the timeout travels per request)
    assert (await a.get_profile())["user_id"] == (await b.get_profile())["user_id"]
    await a.aclose()
    await a.aclose()  # idempotent: b still has its pool
    assert not b._http.is_closed
    await b.aclose()
    assert b._http.is_closed


def test_fleet_spread_scales_with_the_fleet() -> None:
    rng = random.Random(7)
    for _ in range(1000):
        backoff.fleet_joined()
    try:
        delays = [backoff.fleet_spread(50.0, rng) for _ in range(2000)]
    finally:
        for _ in range(1000):
            backoff.fleet_left()
    assert max(delays) < 20.0  # 1000 streams / 50 per second
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(20)]
    # full jitter: about 100 of 2000 draws per second of the window, none of them a burst
    assert min(per_second) > 60, per_second
    assert max(per_second) < 140, per_second
    assert backoff.fleet_spread(None) == 0.0


async def test_mass_disconnect_comes_back_spread_within_rate_limits(
    fleet_sim: Any, clean_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 streams dropped at once come back over the fleet window, none all at the same instant,
    every account within its Upstox rate limits as the simulator counted them, all of them back."""
    n = 20
    # a slower fleet rate, so that 20 streams spread over ~2 s as 1,000 would over 20 s
    monkeypatch.setattr(UpstoxPortfolioStreamTrigger, "stream_options", {"fleet_reconnect_rate": 10.0})
    control = fleet_sim.control
    marks: dict[str, Any] = {}
    back: dict[int, float] = {}

    def dropped_and_back(events: dict[int, list[dict[str, Any]]]) -> bool:
        if "t0" not in marks:
            if _epochs_at_least(events, 1):
                marks["t0"] = time.monotonic()
                control.disconnect(1001)
            return False
        for i, e in events.items():
            if i not in back and e[-1]["stats"]["connection"] >= 2:
                back[i] = time.monotonic() - marks["t0"]
        return len(back) == n

    await _run_fleet(n, dropped_and_back, timeout=60)
    times = sorted(back.values())
    assert times[-1] < 30.0
    assert times[-1] - times[0] > 0.5  # spread out, not a burst
    assert max(sum(1 for t in times if s / 4 <= t < (s + 1) / 4) for s in range(int(times[-1] * 4) + 1)) < n
    accounts = control.accounts()["accounts"]
    assert len(accounts) == n
    assert all(a["limited"] == 0 for a in accounts)
    assert all(a["peak_per_second"] <= 50 and a["peak_per_minute"] <= 500 for a in accounts)
