"""Run an :class:`UpstoxSimulator` on its own event loop in a daemon thread (for sync tests and Airflow).

Tests and DAGs that are not themselves async (or that run their own loop, like the triggerer) need
a simulator they cannot block: this one lives in another thread and is driven over loopback HTTP
through :class:`SimulatorControl`, exactly as a separate process would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from airflow_provider_upstox.simulator.control import AsyncSimulatorControl, SimulatorControl
from airflow_provider_upstox.simulator.server import UpstoxSimulator


@dataclass
class RunningSimulator:
    """Handle of a simulator running in a thread.

    ``base_url`` (``http://127.0.0.1:PORT``), ``token``, ``port``, ``seed``, ``scenario``;
    ``control`` (sync) and ``acontrol`` (async) control clients; ``ws_direct_url(types)`` the
    SDK-style direct-connect URL.
    """

    base_url: str
    token: str
    port: int
    seed: int
    scenario: str
    control: SimulatorControl
    acontrol: AsyncSimulatorControl

    def ws_direct_url(self, update_types: str = "order,position,holding,gtt_order") -> str:
        host = self.base_url.split("://", 1)[1]
        return f"ws://{host}/v2/feed/portfolio-stream-feed?update_types={update_types.replace(',', '%2C')}"

    def __repr__(self) -> str:  # never show the token
        return f"RunningSimulator(base_url={self.base_url!r}, seed={self.seed}, scenario={self.scenario!r})"


@contextmanager
def run_simulator_in_thread(
    token: str, seed: int = 0, scenario: str = "default", **kwargs: Any
) -> Iterator[RunningSimulator]:
    """Start a simulator in a daemon thread; yields a :class:`RunningSimulator`; stops it on exit.

    Keyword arguments are those of :class:`UpstoxSimulator` (``host``, ``port``, ``ping_interval``...).

    :raises RuntimeError: if the simulator did not start within 10 s (the thread's error is chained).
    """
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["loop"], box["stop"] = asyncio.get_running_loop(), stop
        try:
            async with UpstoxSimulator(token=token, seed=seed, scenario=scenario, **kwargs) as sim:
                box["sim"] = sim
                ready.set()
                await stop.wait()
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise

    def target() -> None:
        with contextlib.suppress(BaseException):  # reported through box["error"]
            asyncio.run(main())

    thread = threading.Thread(target=target, name="upstox-simulator", daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in box:
        raise RuntimeError("the Upstox simulator did not start") from box.get("error")
    sim: UpstoxSimulator = box["sim"]
    control = SimulatorControl(sim.base_url)
    try:
        yield RunningSimulator(
            sim.base_url, token, sim.port, seed, scenario, control, AsyncSimulatorControl(sim.base_url)
        )
    finally:
        control.close()
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
