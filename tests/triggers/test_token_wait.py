"""An AssetWatcher's trigger rides through a token expiry: it waits, then resumes with a new token.

The simulator over loopback expires the token on demand (control API), a new one is issued through
its OAuth code exchange and written into the connection the trigger reads (the env-var secrets
source). The trigger runs as an AssetWatcher runs it: one instance, never returning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from airflow_provider_upstox.models.events import BatchEvent, TokenWaitEvent, decode_event
from airflow_provider_upstox.simulator.auth import fingerprint
from tests.reliability.matrix import new_token_via_oauth, write_token
from tests.triggers.harness import Collector, expected_finals, make_trigger

pytestmark = pytest.mark.timeout(120)


class Watcher:
    """Runs the watch-mode trigger in the background, timestamping every event."""

    def __init__(self, **kwargs: Any) -> None:
        self.trigger = make_trigger("watch")
        for name, value in kwargs.items():
            setattr(self.trigger._tokens, name, value)
        self.collector = Collector()
        self.times: list[tuple[float, str]] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        async def run() -> None:
            async for event in self.trigger.run():
                self.times.append((time.monotonic(), event.payload["status"]))
                self.collector.add(event.payload)

        self.task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        assert not self.task.done(), "a watcher's trigger must never return or raise"
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.trigger.cleanup()

    async def until(self, predicate: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    def batches_after(self, moment: float) -> list[float]:
        return [t for t, status in self.times if t > moment and status == "batch"]


def _counter(sim: Any, name: str) -> int:
    return int(sim.control.counters()[name])


@pytest.mark.simulator(scenario="quiet", ping_interval=0.5)
async def test_watcher_waits_for_a_new_token_and_resumes_within_seconds(
    upstox_conn: Any, fast_trigger: Any, clean_registry: None, caplog: pytest.LogCaptureFixture
) -> None:
    sim = upstox_conn
    caplog.set_level(logging.INFO)
    async with Watcher(poll_interval=3.0) as watcher:  # the default: a realistic pick-up time
        await watcher.until(lambda: watcher.collector.events > 0)
        await asyncio.to_thread(sim.control.start_market, 30.0)
        await asyncio.sleep(1.0)

        await asyncio.to_thread(sim.control.expire_token)
        await watcher.until(lambda: watcher.collector.token_waits)
        refused_calls = await asyncio.to_thread(_counter, sim, "unauthorized")
        assert refused_calls <= 2  # the refusal at the reconnect and its one confirmation
        await asyncio.sleep(3.0)  # waiting: the connection is re-read, Upstox is not called
        assert await asyncio.to_thread(_counter, sim, "unauthorized") == refused_calls

        token = await asyncio.to_thread(new_token_via_oauth, sim.base_url)
        write_token(token)
        renewed_at = time.monotonic()
        await watcher.until(lambda: watcher.batches_after(renewed_at), timeout=10.0)
        took = watcher.batches_after(renewed_at)[0] - renewed_at
        print(f"watch mode: new token -> first update after the reconnect: {took:.2f} s")
        assert took < 10.0

        # Nothing lost: every final state (including those made while waiting) reaches an event.
        await asyncio.to_thread(sim.control.quiesce)
        expected = await asyncio.to_thread(lambda: expected_finals(sim.control.state()))
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(watcher.collector.missing, expected) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.3)
        assert not await asyncio.to_thread(watcher.collector.missing, expected)

    waits = watcher.collector.token_waits
    assert len(waits) == 1, "one token_wait event per episode (it becomes an asset event)"
    assert waits[0].refused_fingerprint == fingerprint(sim.token)
    assert waits[0].account
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "refused" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert not [e for e in watcher.collector.errors if e.fatal]
    for secret in (sim.token, token):
        assert secret not in caplog.text
        assert all(secret not in text for text in watcher.collector.texts)


@pytest.mark.simulator(scenario="quiet", ping_interval=0.5)
async def test_a_refused_token_is_probed_at_most_once_per_probe_interval(
    upstox_conn: Any, fast_trigger: Any, clean_registry: None
) -> None:
    sim = upstox_conn
    async with Watcher(probe_interval=1.0, poll_interval=0.2) as watcher:
        await watcher.until(lambda: watcher.collector.events > 0)
        await asyncio.to_thread(sim.control.expire_token)
        await watcher.until(lambda: watcher.collector.token_waits)
        start, began = await asyncio.to_thread(_counter, sim, "unauthorized"), time.monotonic()
        await asyncio.sleep(3.5)
        probes = await asyncio.to_thread(_counter, sim, "unauthorized") - start
        elapsed = time.monotonic() - began
        assert 2 <= probes <= int(elapsed / 1.0) + 1, probes  # probes happen, and no more often
        assert len(watcher.collector.token_waits) == 1  # failed probes are not new episodes

        # A probe that finds the token accepted again (Upstox's refusal was a mistake) resumes.
        await asyncio.to_thread(sim.control.clear_faults)
        moment = time.monotonic()
        await watcher.until(lambda: watcher.batches_after(moment), timeout=5.0)


@pytest.mark.simulator(scenario="quiet", ping_interval=0.5)
async def test_a_single_refusal_is_retried_at_once_not_an_episode(
    upstox_conn: Any, fast_trigger: Any, clean_registry: None
) -> None:
    sim = upstox_conn
    async with Watcher() as watcher:
        await watcher.until(lambda: watcher.collector.events > 0)
        await asyncio.to_thread(sim.control.fail_authorize, 401, 1)
        await asyncio.to_thread(sim.control.disconnect, 1011)
        await asyncio.to_thread(sim.control.step, 5)
        moment = time.monotonic()
        await watcher.until(lambda: watcher.batches_after(moment), timeout=5.0)
    assert watcher.collector.token_waits == []


async def test_deferral_trigger_waits_and_heartbeats_without_calling_upstox(
    upstox_conn: Any, fast_trigger: Any, clean_registry: None
) -> None:
    """Deferral mode, given an episode by the operator: a heartbeat after ``idle_timeout`` while the
    token is unchanged; the first batch soon after the connection holds another token."""
    sim = upstox_conn
    await asyncio.to_thread(sim.control.expire_token)
    now_us = int(time.time() * 1e6)
    episode = TokenWaitEvent(
        refused_fingerprint=fingerprint(sim.token), since_us=now_us, probed_at_us=now_us, account="AB1234"
    )
    payload = {"status": "token_wait", **{k: getattr(episode, k) for k in episode.__struct_fields__}}
    before = await asyncio.to_thread(_counter, sim, "unauthorized")

    waiting = make_trigger("deferral", payload)
    events = [e async for e in waiting.run()]
    assert [e.payload["status"] for e in events] == ["token_wait"]
    heartbeat = decode_event(events[0].payload)
    assert isinstance(heartbeat, TokenWaitEvent)
    assert heartbeat.episode == episode.episode
    assert await asyncio.to_thread(_counter, sim, "unauthorized") == before

    token = await asyncio.to_thread(new_token_via_oauth, sim.base_url)
    resumed = make_trigger("deferral", payload)
    task = asyncio.create_task(anext(resumed.run()))
    await asyncio.sleep(0.3)
    write_token(token)
    renewed_at = time.monotonic()
    event = await asyncio.wait_for(task, 10)
    assert time.monotonic() - renewed_at < 10.0
    assert isinstance(decode_event(event.payload), BatchEvent)  # the snapshot after the reconnect
    await resumed.cleanup()
    assert await asyncio.to_thread(_counter, sim, "unauthorized") == before
