"""The simulator in a subprocess, for tests that measure the trigger's event loop.

An in-process simulator thread competes for the GIL (encoding a large order book holds it for tens of
milliseconds), which would show up as slow callbacks of the loop under test that are not its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from airflow_provider_upstox.simulator.control import SimulatorControl


@dataclass
class SimProcess:
    base_url: str
    token: str
    control: SimulatorControl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def simulator_process(*args: str) -> Iterator[SimProcess]:
    token = f"sim-{secrets.token_urlsafe(24)}"
    for _attempt in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_upstox.simulator", "--port", str(port),
             "--log-level", "WARNING", *args],
            env={**os.environ, "UPSTOX_SIMULATOR_TOKEN": token},
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"{base_url}/_sim/counters", timeout=1.0, trust_env=False)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        raise RuntimeError("the simulator process did not start")
    control = SimulatorControl(base_url)
    try:
        yield SimProcess(base_url=base_url, token=token, control=control)
    finally:
        control.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
