"""Many Upstox accounts for the distributed run: one simulator per account, all in one helper process.

The simulator serves one account per instance (its own token and user id), so N accounts are N
:class:`~airflow_provider_upstox.simulator.UpstoxSimulator` servers, each on its own loopback port,
sharing one event loop in a process of their own (``python -m tests.distributed.simulators``): the
simulators' work then competes with the Airflow processes for the CPU as a separate Upstox would,
and not with the run's own polling. The parent hands the tokens over in a private file (never on a
command line, which every process on the machine can read) and gets the ports back in another.

Each account is driven and read over loopback HTTP through its own
:class:`~airflow_provider_upstox.simulator.SimulatorControl` (``/_sim/...``), its ground truth is its
own ``/_sim/state``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_upstox.simulator import SimulatorControl, UpstoxSimulator

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 120.0  #: seconds for every simulator to listen (a loaded machine is slow)


@dataclass
class Account:
    """One simulated Upstox account and the Airflow connection that streams it."""

    conn_id: str
    user_id: str
    token: str
    base_url: str
    control: SimulatorControl

    def __repr__(self) -> str:  # never show the token
        return f"Account(conn_id={self.conn_id!r}, user_id={self.user_id!r}, base_url={self.base_url!r})"


@contextlib.contextmanager
def simulator_fleet(
    count: int, *, seed: int = 1, ping_interval: float = 2.0, workdir: Path | None = None
) -> Iterator[list[Account]]:
    """Start *count* simulators (market stopped: scenario ``quiet``) in one helper process.

    Connection ids are ``upstox_1`` ... ``upstox_<count>``, user ids ``UPX0001`` ...; the process
    group of the helper is killed on exit, whatever happened.
    """
    folder = Path(tempfile.mkdtemp(prefix="upstox-fleet-", dir=workdir))
    spec_path, ready_path, log_path = folder / "spec.json", folder / "ready.json", folder / "simulators.log"
    spec = [
        {"user_id": f"UPX{i:04d}", "token": f"tok-{secrets.token_urlsafe(24)}", "seed": seed + i}
        for i in range(1, count + 1)
    ]
    fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"accounts": spec, "ping_interval": ping_interval}, f)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.simulators", str(spec_path), str(ready_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    accounts: list[Account] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not ready_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulators did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        urls = json.loads(ready_path.read_text())
        for i, (item, url) in enumerate(zip(spec, urls, strict=True), start=1):
            control = SimulatorControl(url)
            accounts.append(Account(f"upstox_{i}", item["user_id"], item["token"], url, control))
        yield accounts
    finally:
        for account in accounts:
            account.control.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for path in (spec_path, ready_path, log_path):
            path.unlink(missing_ok=True)
        folder.rmdir()


async def _serve(spec: dict[str, Any], ready_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        sims = [
            await stack.enter_async_context(
                UpstoxSimulator(
                    token=a["token"],
                    seed=a["seed"],
                    scenario="quiet",
                    user_id=a["user_id"],
                    ping_interval=spec["ping_interval"],
                )
            )
            for a in spec["accounts"]
        ]
        partial = ready_path.with_suffix(".tmp")
        partial.write_text(json.dumps([sim.base_url for sim in sims]))
        partial.rename(ready_path)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.distributed.simulators", description=__doc__)
    parser.add_argument("spec", type=Path, help="JSON: accounts (user_id, token, seed), ping_interval")
    parser.add_argument("ready", type=Path, help="written with the simulators' base URLs once all listen")
    args = parser.parse_args(argv)
    asyncio.run(_serve(json.loads(args.spec.read_text()), args.ready))


if __name__ == "__main__":
    main()
