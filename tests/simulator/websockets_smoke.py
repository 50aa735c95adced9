"""The simulator and the stream client end to end, on whichever ``websockets`` is importable.

``test_request_body.py`` runs this as ``python -m tests.simulator.websockets_smoke`` with an older
``websockets`` first on ``sys.path`` (the declared lower bound, and the newest release on Python
3.10), so CI checks the versions a Python 3.10 user gets without a Python 3.10 install. It covers
what differs between them: a control ``POST`` (``/_sim/market``), a ``POST`` with a form body (the
code exchange), the stream authorize, the WebSocket upgrade and the stream client reading updates.
Prints ``websockets <version>: ok`` on success; raises otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import websockets

from airflow_provider_upstox.client import login
from airflow_provider_upstox.simulator import RunningSimulator, run_simulator_in_thread
from airflow_provider_upstox.stream.client import PortfolioStreamClient

APP = login.LoginApp("sim-client-id", "sim-client-secret", "http://127.0.0.1:9/callback")


def _login(sim: RunningSimulator) -> str:
    """A new access token through the OAuth dialog and the code exchange (it replaces the old one)."""
    dialog = httpx.get(login.authorization_dialog_url(sim.base_url, APP, "s"), trust_env=False)
    assert dialog.status_code == 302, dialog.text
    code = dialog.headers["location"].split("code=")[1].split("&")[0]
    issued = login.parse_code_exchange(login.send(login.code_exchange_request(sim.base_url, APP, code)))
    assert issued.access_token
    return issued.access_token


async def _stream(sim: RunningSimulator, token: str) -> int:
    async def authorize() -> str:
        async with httpx.AsyncClient(trust_env=False) as http:
            answer = await http.get(
                f"{sim.base_url}/v2/feed/portfolio-stream-feed/authorize",
                params={"update_types": "order,position,holding,gtt_order"},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            )
        answer.raise_for_status()
        return str(answer.json()["data"]["authorized_redirect_uri"])

    async def no_snapshot(update_type: str) -> list[dict[str, Any]]:
        return []

    async with PortfolioStreamClient(authorize, no_snapshot, snapshot_on_connect=False) as stream:
        while (await sim.acontrol.counters())["connected"] < 1:  # noqa: ASYNC110 - polled over HTTP
            await asyncio.sleep(0.02)  # until the server side has the socket
        await sim.acontrol.step(30)  # a control POST while a socket is open
        updates = await asyncio.wait_for(stream.next_batch(10, 0.2), 10)
    assert updates, "no update arrived"
    return len(updates)


def main() -> None:
    with run_simulator_in_thread(token="smoke-token", scenario="quiet") as sim:
        assert sim.control.market(rate=5, running=False)["running"] is False  # POST /_sim/market
        token = _login(sim)
        received = asyncio.run(asyncio.wait_for(_stream(sim, token), 30))
    print(f"websockets {websockets.__version__}: ok ({received} updates)")


if __name__ == "__main__":
    main()
