"""Fixtures for driving ``UpstoxPortfolioStreamTrigger`` the way the triggerer does."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import tenacity

from airflow_provider_upstox.hooks.upstox import UpstoxHook
from airflow_provider_upstox.stream import no_delays
from airflow_provider_upstox.triggers.handoff import registry
from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger
from tests.triggers.sim_process import SimProcess, simulator_process


@pytest.fixture
def upstox_conn(simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``upstox_default`` pointing at the simulator, as an environment variable connection."""
    conn = {"conn_type": "upstox", "password": simulator.token, "host": simulator.base_url}
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_DEFAULT", json.dumps(conn))
    return simulator


@pytest.fixture
def sim_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimProcess]:
    """A quiet simulator in its own process (server pings every 0.2 s), as ``upstox_default``."""
    with simulator_process("--scenario", "quiet", "--ping-interval", "0.2") as sim:
        conn = {"conn_type": "upstox", "password": sim.token, "host": sim.base_url}
        monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_DEFAULT", json.dumps(conn))
        sim.control.counters()  # warm the control client up (connection, imports) before measuring
        yield sim


@pytest.fixture
def fast_trigger(monkeypatch: pytest.MonkeyPatch) -> type[UpstoxPortfolioStreamTrigger]:
    """Short delays everywhere, so faults recover in milliseconds rather than minutes."""
    cls = UpstoxPortfolioStreamTrigger
    monkeypatch.setattr(cls, "auth_retry_delay", 0.2)
    monkeypatch.setattr(cls, "error_retry_delay", 0.05)
    monkeypatch.setattr(cls, "hook_options", {"retry_wait": tenacity.wait_none()})
    monkeypatch.setattr(
        cls,
        "stream_options",
        {
            "reconnect_delays": no_delays,
            "min_reconnect_delay": 0.02,
            "ping_interval": 1.0,
            "ping_timeout": 1.0,
        },
    )
    return cls


@pytest.fixture
async def clean_registry() -> AsyncIterator[None]:
    yield
    await registry.aclose_all()
    assert len(registry) == 0


class SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode 'Executing <...> took N seconds' warnings (wall clock), and the
    CPU time of every callback of the loop thread (``time.thread_time``), which a loaded machine
    preempting the process cannot inflate."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.cpu_slow: list[tuple[float, str]] = []
        self.max_cpu = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "took" in message and "Executing" in message:
            self.messages.append(message)

    def check(self, threshold: float = 0.05) -> None:
        """No callback over *threshold* of CPU time. asyncio's own wall-clock warnings are printed,
        not asserted: on two cores the simulator process beside the loop preempts it for tens of
        milliseconds at moments a 1-minute load average cannot see (a clean-clone CI run: 66 ms of
        wall clock for a callback under the CPU limit), while CPU time measures what the trigger's
        code itself blocks."""
        assert not self.cpu_slow, self.cpu_slow
        if self.messages:
            load = os.getloadavg()[0]
            print(
                f"load {load:.1f}: {len(self.messages)} wall-clock slow callbacks, not counted", self.messages
            )


@pytest.fixture
async def debug_loop(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlowCallbacks]:
    """Asyncio debug mode with a 50 ms slow-callback threshold on the test's loop.

    The first connection lookup of a process imports and initialises Airflow's secrets backends;
    a triggerer pays that once at start-up, so it is done here before measuring.
    """
    with contextlib.suppress(Exception):
        await UpstoxHook().aget_settings()
    await asyncio.to_thread(lambda: None)  # the default executor's first thread
    loop = asyncio.get_running_loop()
    handler = SlowCallbacks()
    run = asyncio.events.Handle._run
    loop_thread = threading.get_ident()

    def timed_run(self: asyncio.Handle) -> None:
        if threading.get_ident() != loop_thread:
            return run(self)
        start = time.thread_time()
        try:
            return run(self)
        finally:
            spent = time.thread_time() - start
            handler.max_cpu = max(handler.max_cpu, spent)
            if spent > 0.05:
                owner = getattr(self._callback, "__self__", None)
                handler.cpu_slow.append((spent, repr(owner if owner is not None else self)[:400]))

    monkeypatch.setattr(asyncio.events.Handle, "_run", timed_run)
    # Python's full collections scan every object of the process, and pytest, Airflow and the test
    # harness hold far more than a triggerer's trigger code: on this heap one costs ~0.1 s of CPU,
    # charged to whichever callback happened to allocate. Objects from before the test are frozen
    # out of collection, as a long-running process's start-up heap effectively is.
    gc.collect()
    gc.freeze()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    previous = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    try:
        yield handler
    finally:
        loop.set_debug(previous[0])
        loop.slow_callback_duration = previous[1]
        logger.removeHandler(handler)
        gc.unfreeze()
