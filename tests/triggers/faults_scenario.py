"""10,000 updates through drops, duplicates, reorders, hangs, close codes, failed authorizes and an
expired token: every final state of every order, position, holding and GTT reaches some event.

Run by ``test_portfolio_stream_faults.py`` in a Python process of its own (its file name keeps it
out of the session's collection); run it directly with ``pytest tests/triggers/faults_scenario.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_provider_upstox.models.events import ErrorKind
from airflow_provider_upstox.simulator.auth import fingerprint
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

    # The token expires: open sockets close (1008), authorize answers 401, the confirming second
    # try too -> the stream waits for a new token, reported once as a token_wait event.
    waits_before = len(collector.token_waits)
    await ctl.expire_token()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(collector.token_waits) == waits_before:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # (deferral: heartbeats of the same episode may follow)
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    waits = collector.token_waits[waits_before:]
    assert waits, "no token_wait event after the token expired"
    assert {w.episode for w in waits} == {waits[0].episode}, "one refusal episode, not one per retry"
    assert waits[0].refused_fingerprint == fingerprint(sim.token)
    assert "token" in waits[0].message.lower()
    assert not [e for e in collector.errors if e.kind is ErrorKind.AUTHENTICATION]

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
    print(
        json.dumps(
            {
                "mode": mode,
                "events": collector.events,
                "updates": collector.updates,
                "max_callback_cpu_ms": round(debug_loop.max_cpu * 1000, 1),
            }
        )
    )
