"""10,000 updates through drops, duplicates, reorders, hangs, close codes, failed authorizes and an
expired token: every final state of every order, position, holding and GTT reaches some event."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_provider_upstox.models.events import ErrorKind
from tests.triggers.harness import (
    Collector,
    ThreadedControl,
    drive_deferral,
    drive_watch,
    expected_finals,
    produce,
)

pytestmark = pytest.mark.timeout(180)

TOTAL = 10_000


@pytest.mark.parametrize("mode", ["deferral", "watch"])
async def test_every_final_state_reaches_an_event(
    mode: str, sim_process: Any, fast_trigger: Any, clean_registry: None, debug_loop: Any, caplog: Any
) -> None:
    sim = sim_process
    ctl = ThreadedControl(sim.control)
    collector = Collector()
    stop = asyncio.Event()
    driver = drive_deferral if mode == "deferral" else drive_watch
    task = asyncio.create_task(driver(collector, stop))
    counters = await produce(ctl, TOTAL // 2)

    expected = await asyncio.to_thread(lambda: expected_finals(sim.control.state()))
    assert len(expected) > 50
    deadline = time.monotonic() + 30
    while await asyncio.to_thread(collector.missing, expected) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    missing = await asyncio.to_thread(collector.missing, expected)
    assert not missing, (
        f"{len(missing)} final states never reached an event, e.g. {list(missing.items())[:5]}"
    )

    # The token expires: open sockets close (1008), authorize answers 401 -> an authentication error event.
    errors_before = len(collector.errors)
    await ctl.expire_token()
    deadline = time.monotonic() + 15

    def auth_error_seen() -> bool:
        return any(e.kind is ErrorKind.AUTHENTICATION for e in collector.errors[errors_before:])

    while time.monotonic() < deadline and not auth_error_seen():  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.05)
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    auth_errors = [e for e in collector.errors[errors_before:] if e.kind is ErrorKind.AUTHENTICATION]
    assert auth_errors
    assert auth_errors[0].fatal is True
    assert "regenerate" in auth_errors[0].message.lower() or "token" in auth_errors[0].message.lower()

    # Faults really happened, and were recovered from.
    assert counters["dropped_connections"] >= 4, counters
    assert counters["duplicated"] > 0, counters
    assert counters["malformed_sent"] > 0, counters
    await asyncio.to_thread(collector.process)
    assert collector.updates >= TOTAL // 2

    # Nothing secret anywhere: events, logs.
    codes = (await ctl.issued_codes())["issued_codes"]
    assert len(codes) >= 5
    logs = "\n".join(r.getMessage() for r in caplog.records if "simulator" not in r.name)
    for secret in [sim.token, *codes]:
        assert secret not in logs
        for text in collector.texts:
            assert secret not in text
    debug_loop.check()
    print(json.dumps({"mode": mode, "events": collector.events, "updates": collector.updates}))
