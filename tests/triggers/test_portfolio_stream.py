"""Trigger basics: serialization, modes, idle events, the hand-off, metrics-free payload shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_upstox.models.events import BatchEvent, IdleEvent, StreamEvent, decode_event
from airflow_provider_upstox.triggers.handoff import registry
from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

pytestmark = pytest.mark.timeout(60)


def test_serialize_is_plain_json_and_secret_free() -> None:
    trigger = UpstoxPortfolioStreamTrigger(upstox_conn_id="acct", update_types="position, order")
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_upstox.triggers.portfolio_stream.UpstoxPortfolioStreamTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs == {
        "upstox_conn_id": "acct",
        "update_types": ["order", "position"],
        "max_batch_size": 250,
        "max_batch_wait": 1.0,
        "idle_timeout": 90.0,
        "mode": "auto",
        "max_event_bytes": 256_000,
        "acked_seq": None,
        "token_wait": None,
        "token_poll_interval": 3.0,
        "token_probe_interval": 900.0,
    }
    assert UpstoxPortfolioStreamTrigger(**kwargs).serialize() == (classpath, kwargs)
    acked = UpstoxPortfolioStreamTrigger(acked_seq=1_740_641_185_000_123).serialize()[1]
    assert json.loads(json.dumps(acked))["acked_seq"] == 1_740_641_185_000_123
    assert trigger.effective_mode() == "watch"  # no task deferred to it: an AssetWatcher


@pytest.mark.parametrize(
    "kwargs",
    [{"update_types": "orders"}, {"max_batch_size": 0}, {"mode": "forever"}, {"max_event_bytes": 10}],
)
def test_invalid_kwargs_fail_fast(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        UpstoxPortfolioStreamTrigger(**kwargs)


async def test_deferral_snapshot_then_handoff_then_idle(
    sim_process: Any, fast_trigger: Any, clean_registry: None
) -> None:
    def make() -> UpstoxPortfolioStreamTrigger:
        return UpstoxPortfolioStreamTrigger(mode="deferral", max_batch_wait=0.05, idle_timeout=0.5)

    payloads = [e.payload async for e in make().run()]
    assert len(payloads) == 1
    first = decode_event(payloads[0])
    assert isinstance(first, BatchEvent)
    assert {u.source for u in first.updates} == {"snapshot"}
    assert first.stats.handoffs == 0
    assert len(registry) == 1

    sim_process.control.step(30)
    second = decode_event([e.payload async for e in make().run()].pop())
    assert isinstance(second, BatchEvent)
    assert second.stats.handoffs == 1
    updates = second.updates
    assert updates
    assert {u.source for u in updates} == {"stream"}
    assert {u.connection_epoch for u in updates} == {1}
    assert all(u.account == first.account for u in updates)

    while True:  # drain, then a quiet stream gives an idle event for the operator's stop conditions
        payload = [e.payload async for e in make().run()].pop()
        if isinstance(decode_event(payload), IdleEvent):
            break
    assert set(payload) == {"status", "account", "idle_since_us", "stats"}


async def test_unacknowledged_batch_is_re_emitted_to_the_next_instance(
    sim_process: Any, fast_trigger: Any, clean_registry: None
) -> None:
    """Bug 2: a try that dies between the event and its commit must get the batch again on retry."""

    def make(acked_seq: int | None, idle_timeout: float) -> UpstoxPortfolioStreamTrigger:
        return UpstoxPortfolioStreamTrigger(
            mode="deferral", max_batch_wait=0.05, idle_timeout=idle_timeout, acked_seq=acked_seq
        )

    async def one(acked_seq: int | None, idle_timeout: float = 0.5) -> StreamEvent:
        trigger = make(acked_seq, idle_timeout)
        events = [decode_event(e.payload) async for e in trigger.run()]
        await trigger.cleanup()
        assert len(events) == 1
        return events[0]

    async def batch(acked_seq: int | None, idle_timeout: float = 0.5) -> BatchEvent:
        event = await one(acked_seq, idle_timeout)
        assert isinstance(event, BatchEvent), event
        return event

    # First deferral of a try: a fresh connection, snapshot first. Profile, authorize, connect and
    # four REST snapshots come before its first update: 0.5 s was too short on a loaded CI machine.
    snapshot = await batch(0, idle_timeout=5.0)
    acked = max(u.seq for u in snapshot.updates)
    sim_process.control.step(20)
    lost = await batch(acked)  # a live batch, taken over; its try "dies" before committing it
    lost_updates = lost.updates
    assert lost.stats.handoffs == 1
    assert {u.source for u in lost_updates} == {"stream"}

    retried = await batch(0)  # the retry (a fresh try) takes the parked stream over: same batch again
    assert retried.stats.handoffs == 2
    assert retried.updates == lost_updates

    partly = max(u.seq for u in lost_updates[: len(lost_updates) // 2]) if len(lost_updates) > 1 else acked
    again = await batch(partly)  # only what is above the committed seq comes back
    assert again.updates == [u for u in lost_updates if u.seq > partly]

    sim_process.control.step(10)
    committed = max(u.seq for u in lost_updates)
    fresh = await one(committed)  # acknowledged: new updates only (the fast path)
    if isinstance(fresh, BatchEvent):
        assert min(u.seq for u in fresh.updates) > committed

    sim_process.control.step(10)
    plain = await one(None)  # a consumer that does not acknowledge never gets a batch twice
    if isinstance(plain, BatchEvent) and isinstance(fresh, BatchEvent):
        fresh_seqs = {u.seq for u in fresh.updates}
        assert not fresh_seqs & {u.seq for u in plain.updates}


async def test_max_event_bytes_splits_batches(
    sim_process: Any, fast_trigger: Any, clean_registry: None
) -> None:
    sim_process.control.step(200)
    trigger = UpstoxPortfolioStreamTrigger(mode="watch", max_batch_size=2000, max_batch_wait=0.3,
                                           max_event_bytes=8192)  # fmt: skip
    agen = trigger.run()
    sizes = []
    for _ in range(5):
        event = await anext(agen)
        sizes.append(len(json.dumps(event.payload)))
    await agen.aclose()
    await trigger.cleanup()
    assert max(sizes) <= 8192 + 512
