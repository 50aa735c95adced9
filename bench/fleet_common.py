"""What the fleet benches share: a multi-account simulator process, connections, and a triggerer's loop.

``bench/stream_fleet.py`` (per-stream cost, herd) and ``bench/stream_soak.py`` (an hour at market
rate) run N watch-mode ``UpstoxPortfolioStreamTrigger`` in one process, one per account, against
the simulator in another process (``--accounts N``: its CPU is not counted here). Each trigger is
driven as Airflow's triggerer drives it: one task per trigger iterating ``trigger.run()``.
Connections are ``AIRFLOW_CONN_*`` environment variables, as in the tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from airflow_provider_upstox.simulator.__main__ import account_token

TYPES = "order,position,holding,gtt_order"


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FleetSimulator:
    """The simulator with *accounts* accounts in its own process (scenario ``quiet``, frames stamped)."""

    def __init__(self, accounts: int) -> None:
        self.accounts = accounts
        self.token = secrets.token_urlsafe(222)  # ~300 characters, as long as a real Upstox token
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_upstox.simulator", "--port", str(self.port),
             "--scenario", "quiet", "--accounts", str(accounts), "--stamp-frames", "--log-level", "WARNING"],
            env={**os.environ, "UPSTOX_SIMULATOR_TOKEN": self.token},
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.http = httpx.Client(base_url=self.base_url, timeout=120, trust_env=False)
        for _ in range(600):
            try:
                self.http.get("/_sim/counters")
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("simulator did not start")

    def tokens(self) -> list[str]:
        return [self.token] + [account_token(self.token, i) for i in range(1, self.accounts)]

    def post(self, what: str, **params: Any) -> dict[str, Any]:
        r = self.http.post(f"/_sim/{what}", params={k: json.dumps(v) for k, v in params.items()})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def get(self, what: str) -> dict[str, Any]:
        r = self.http.get(f"/_sim/{what}")
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def connection_env(base_url: str, tokens: list[str]) -> dict[str, str]:
    """``AIRFLOW_CONN_UPSTOX_FLEET_<i>`` for every token (the conn ids are ``upstox_fleet_<i>``)."""
    return {
        f"AIRFLOW_CONN_UPSTOX_FLEET_{i}": json.dumps({"conn_type": "upstox", "password": t, "host": base_url})
        for i, t in enumerate(tokens)
    }


def log_like_a_triggerer(path: str) -> None:
    """INFO to a file through Airflow's secrets masker, as a triggerer's log handler filters it."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_secrets_masker())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def masker_patterns() -> int:
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    return len(_secrets_masker().patterns)


async def warm_up(conn_id: str) -> None:
    """What a triggerer pays once at start-up: Airflow's secrets backends, the shared TLS context."""
    from airflow_provider_upstox.client.aio import ashared_ssl_context
    from airflow_provider_upstox.hooks.upstox import UpstoxHook

    await UpstoxHook(conn_id).aget_settings()
    await ashared_ssl_context(True)
    await asyncio.to_thread(lambda: None)


class Fleet:
    """N watch-mode triggers, one task each; *on_event(index, payload, now_us)* sees every event."""

    def __init__(self, n: int, on_event: Callable[[int, dict[str, Any], int], None]) -> None:
        self.n = n
        self.on_event = on_event
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._drive(i), name=f"trigger-{i}") for i in range(self.n)]

    async def _drive(self, index: int) -> None:
        from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

        trigger = UpstoxPortfolioStreamTrigger(upstox_conn_id=f"upstox_fleet_{index}", mode="watch")
        agen = trigger.run()
        try:
            async for event in agen:
                self.on_event(index, event.payload, time.time_ns() // 1000)
        finally:
            await agen.aclose()
            await trigger.cleanup()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def cpu_percent(seconds_cpu: float, seconds_wall: float) -> float:
    return 100.0 * seconds_cpu / seconds_wall if seconds_wall > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
