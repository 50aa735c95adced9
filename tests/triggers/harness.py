"""Drive the trigger like the triggerer, run a faulty 10,000-update market, check against ground truth."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    IdleEvent,
    TokenWaitEvent,
    decode_event,
)
from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger


def signature(update_type: str, data: dict[str, Any]) -> tuple[str, tuple[Any, ...]] | None:
    """Key and the fields that tell one state of an object from the next (REST and stream agree on these)."""
    if update_type == "order":
        key = data.get("order_id")
        fields: tuple[Any, ...] = (
            data.get("status"),
            data.get("filled_quantity"),
            data.get("order_request_id"),
        )
    elif update_type == "position":
        key = f"{data.get('instrument_token')}:{data.get('product')}"
        fields = (data.get("quantity"), data.get("day_buy_quantity"), data.get("day_sell_quantity"))
    elif update_type == "holding":
        key = data.get("isin")
        fields = (data.get("quantity"), data.get("t1_quantity"))
    elif update_type == "gtt_order":
        key = data.get("gtt_order_id")
        fields = tuple(r.get("status") for r in data.get("rules") or [])
    else:
        return None
    return str(key), tuple(None if v is None else str(v) for v in fields)


def expected_finals(state: dict[str, Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
    out: dict[tuple[str, str], tuple[Any, ...]] = {}
    sections = {"order": "orders", "position": "positions", "holding": "holdings", "gtt_order": "gtt_orders"}
    for update_type, section in sections.items():
        for value in state[section].values():
            data = value["final"] if update_type == "order" else value
            sig = signature(update_type, data)
            assert sig is not None
            out[(update_type, sig[0])] = sig[1]
    return out


class Collector:
    """Everything the 'operator' received. ``add`` keeps each payload as the JSON text the triggerer
    would store (it runs on the loop under test; text keeps the garbage collector's work on that loop
    small); decoding and bookkeeping happen in :meth:`process`, called from a worker thread."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._done = 0
        self.seen: dict[tuple[str, str], set[tuple[Any, ...]]] = defaultdict(set)
        self.updates = 0
        self.errors: list[ErrorEvent] = []
        self.token_waits: list[TokenWaitEvent] = []
        self.idle = 0

    @property
    def events(self) -> int:
        return len(self.texts)

    def add(self, payload: dict[str, Any]) -> None:
        self.texts.append(json.dumps(payload))
        if payload["status"] == "error":  # the wire shape: fatality is the kind's, not a flag
            assert set(payload) == {"status", "error_type", "exception", "message", "account"}
            error = decode_event(payload)
            assert isinstance(error, ErrorEvent)
            self.errors.append(error)
        elif payload["status"] == "token_wait":
            wait = decode_event(payload)
            assert isinstance(wait, TokenWaitEvent)
            self.token_waits.append(wait)

    def process(self) -> None:
        while self._done < len(self.texts):
            payload = json.loads(self.texts[self._done])
            self._done += 1
            event = decode_event(payload)
            if isinstance(event, BatchEvent):
                for update in event.updates:
                    self.updates += 1
                    sig = signature(update.update_type, update.data)
                    if sig is not None:
                        self.seen[(update.update_type, sig[0])].add(sig[1])
            elif isinstance(event, IdleEvent):
                self.idle += 1
            else:
                assert isinstance(event, (ErrorEvent, TokenWaitEvent)), payload

    def missing(self, expected: dict[tuple[str, str], tuple[Any, ...]]) -> dict[tuple[str, str], Any]:
        self.process()
        return {k: v for k, v in expected.items() if v not in self.seen.get(k, set())}


def make_trigger(mode: str, token_wait: dict[str, Any] | None = None) -> UpstoxPortfolioStreamTrigger:
    trigger = UpstoxPortfolioStreamTrigger(
        upstox_conn_id="upstox_default",
        max_batch_size=500,
        max_batch_wait=0.05,
        idle_timeout=0.6,
        mode=mode,
        token_wait=token_wait,
        token_poll_interval=0.2,
    )
    _classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)  # plain JSON, as Airflow stores it
    return type(trigger)(**kwargs)  # re-created from its serialized form, as the triggerer does


async def drive_deferral(collector: Collector, stop: asyncio.Event) -> int:
    """The continuous operator: a new trigger per event, each yielding exactly one event; a
    ``token_wait`` event is passed to the next trigger, as the operator does through its progress."""
    instances = 0
    token_wait: dict[str, Any] | None = None
    while not stop.is_set():
        trigger = make_trigger("deferral", token_wait)
        instances += 1
        events = [event async for event in trigger.run()]
        await trigger.cleanup()
        assert len(events) == 1
        collector.add(events[0].payload)
        status = events[0].payload["status"]
        token_wait = events[0].payload if status == "token_wait" else None
        if status == "error":
            await asyncio.sleep(0.05)  # the operator would re-defer; don't spin on a dead token
    return instances


async def drive_watch(collector: Collector, stop: asyncio.Event) -> int:
    """An AssetWatcher: one trigger, run forever, cancelled at the end."""
    trigger = make_trigger("watch")
    agen = trigger.run()
    try:
        async for event in agen:
            collector.add(event.payload)
    finally:
        await agen.aclose()
        await trigger.cleanup()
    return 1


async def produce(ctl: Any, total: int) -> dict[str, Any]:
    """Advance the market by *total* messages through a sequence of fault phases."""
    phases: list[dict[str, Any]] = [
        {"drop_every": 700, "drop_mode": 1000},
        {"drop_every": 900, "drop_mode": 1001},
        {"duplicate_probability": 0.05, "reorder_window": 5},
        {"drop_every": 800, "drop_mode": 1011},
        {
            "malformed_every": 300,
            "unknown_type_every": 250,
            "oversized_every": 700,
            "oversized_bytes": 1_200_000,
        },
        {"drop_every": 600, "drop_mode": "reset"},
    ]
    per_phase = total // len(phases) + 1
    start = (await ctl.counters())["model_messages"]
    target = start
    for index, faults in enumerate(phases):
        await ctl.clear_faults()
        await ctl.set_faults(**faults)
        target += per_phase
        while (await ctl.counters())["model_messages"] < target:
            await ctl.step(40)
            await asyncio.sleep(0.01)
        if index == 1:  # a silent hang, detected by the idle timeout
            await ctl.clear_faults()
            await ctl.hang(True)
            await ctl.step(60)
            await asyncio.sleep(1.0)
            await ctl.hang(False)
        if index == 2:  # a failing authorize (retried), refused handshakes, then a refused token once
            await ctl.clear_faults()
            await ctl.fail_authorize(503, 2)
            await ctl.disconnect(1011)
            await asyncio.sleep(0.3)
            await ctl.fail_authorize(429, 1)
            await ctl.refuse_handshakes(2)
            await ctl.disconnect(1001)
            await asyncio.sleep(0.3)
            await ctl.fail_authorize(401, 1)
            await ctl.disconnect(1011)
            await ctl.step(50)
            await asyncio.sleep(0.5)
    await ctl.clear_faults()
    await ctl.quiesce()
    counters: dict[str, Any] = await ctl.counters()
    assert counters["model_messages"] - start >= total
    return counters


class ThreadedControl:
    """The simulator's sync control client, called from a worker thread.

    ``AsyncSimulatorControl`` opens a new ``httpx.AsyncClient`` per call (SSL context set-up takes
    ~100 ms), which would itself trip the slow-callback check this test makes of the trigger.
    """

    def __init__(self, control: Any) -> None:
        self._control = control

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._control, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call
