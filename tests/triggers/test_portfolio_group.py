"""One watcher for a group of accounts: every member's events, each tagged with its connection, and a
member whose connection is broken does not hold the others back. Real simulator over loopback with
one account per connection, the trigger driven as Airflow's triggerer drives a watcher.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import pytest

from airflow_provider_upstox.models.events import BatchEvent, ErrorEvent, decode_event, group_members
from airflow_provider_upstox.simulator import run_simulator_in_thread
from airflow_provider_upstox.triggers.portfolio_group import UpstoxPortfolioGroupStreamTrigger


@pytest.fixture
def three_accounts(monkeypatch: pytest.MonkeyPatch) -> Any:
    token = f"group-{secrets.token_urlsafe(16)}"
    extra = {f"{token}-{i}": f"SIM{i:05d}" for i in (1, 2)}
    with run_simulator_in_thread(token, scenario="quiet", accounts=extra, ping_interval=1.0) as sim:
        for i, t in enumerate([token, *extra]):
            conn = {"conn_type": "upstox", "password": t, "host": sim.base_url}
            monkeypatch.setenv(f"AIRFLOW_CONN_UPSTOX_G_{i}", json.dumps(conn))
        yield sim, [token, *extra]


async def _collect(trigger: UpstoxPortfolioGroupStreamTrigger, until: Any, timeout: float = 60) -> list[Any]:
    payloads: list[Any] = []

    async def drive() -> None:
        agen = trigger.run()
        try:
            async for event in agen:
                payloads.append(event.payload)
        finally:
            await agen.aclose()
            await trigger.cleanup()

    task = asyncio.create_task(drive())
    try:
        deadline = time.monotonic() + timeout
        while not until(payloads):
            assert time.monotonic() < deadline, payloads[-3:]
            assert not task.done(), task
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return payloads


def _members(payloads: list[Any]) -> list[dict[str, Any]]:
    """The member events of the group events (each one group event per ``group_wait`` at most)."""
    assert all(p["status"] == "group" for p in payloads)
    # One compressed string, not nested values: see models.events.encode_group.
    assert all(set(p) == {"status", "members_zlib"} and isinstance(p["members_zlib"], str) for p in payloads)
    return [m for p in payloads for m in group_members(p) or []]


def _snapshot_accounts(payloads: list[Any]) -> dict[str, str]:
    """conn id -> account of every member that delivered its first (snapshot) batch."""
    found = {}
    for member in _members(payloads):
        event = decode_event(member)
        if isinstance(event, BatchEvent):
            found[member["conn_id"]] = event.account
    return found


async def test_every_member_streams_into_one_trigger(
    three_accounts: Any, fast_trigger: Any, clean_registry: None
) -> None:
    _sim, tokens = three_accounts
    trigger = UpstoxPortfolioGroupStreamTrigger(
        ["upstox_g_0", "upstox_g_1", "upstox_g_2"], max_batch_wait=0.2
    )
    classpath, kwargs = trigger.serialize()
    assert classpath.endswith("UpstoxPortfolioGroupStreamTrigger")
    assert kwargs["upstox_conn_ids"] == ["upstox_g_0", "upstox_g_1", "upstox_g_2"]
    assert not any(t in json.dumps(kwargs) for t in tokens)

    payloads = await _collect(trigger, lambda p: len(_snapshot_accounts(p)) == 3)
    accounts = _snapshot_accounts(payloads)
    assert len(set(accounts.values())) == 3  # three distinct Upstox accounts, each under its connection
    assert not any(t in json.dumps(payloads) for t in tokens)
    # The three connects happen together: their batches share group events.
    assert len(payloads) < len(_members(payloads))

    # A bound on the members per group event: three snapshots need two events at least.
    more = await _collect(
        UpstoxPortfolioGroupStreamTrigger(["upstox_g_0", "upstox_g_1", "upstox_g_2"], max_members=2),
        lambda p: len(_snapshot_accounts(p)) == 3,
    )
    assert max(len(group_members(p) or []) for p in more) <= 2


async def test_a_broken_member_does_not_stop_the_others(
    three_accounts: Any, fast_trigger: Any, clean_registry: None
) -> None:
    trigger = UpstoxPortfolioGroupStreamTrigger(
        ["upstox_g_0", "upstox_missing", "upstox_g_2"], max_batch_wait=0.2
    )

    def done(payloads: list[Any]) -> bool:
        errors = [m for m in _members(payloads) if isinstance(decode_event(m), ErrorEvent)]
        return len(_snapshot_accounts(payloads)) == 2 and any(
            p["conn_id"] == "upstox_missing" for p in errors
        )

    payloads = await _collect(trigger, done)
    assert set(_snapshot_accounts(payloads)) == {"upstox_g_0", "upstox_g_2"}
