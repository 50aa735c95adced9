"""Helpers for the simulator's own tests: authorize over real HTTP, read frames off a real socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from airflow_provider_upstox.simulator import RunningSimulator

ALL_TYPES = "order,position,holding,gtt_order"
AUTHORIZE = "/v2/feed/portfolio-stream-feed/authorize"


def auth_headers(sim: RunningSimulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.token}", "Accept": "application/json"}


def authorize(sim: RunningSimulator, update_types: str | None = ALL_TYPES) -> str:
    """The single-use stream URL, through the documented authorize endpoint."""
    params = {} if update_types is None else {"update_types": update_types}
    r = httpx.get(sim.base_url + AUTHORIZE, params=params, headers=auth_headers(sim), trust_env=False)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["authorized_redirect_uri"])


def rest(sim: RunningSimulator, path: str, **params: Any) -> httpx.Response:
    return httpx.get(sim.base_url + path, params=params, headers=auth_headers(sim), trust_env=False)


async def recv_json(ws: ClientConnection, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Exactly *count* messages, decoded (fails on timeout)."""
    out = []
    for _ in range(count):
        out.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    return out


async def recv_until_quiet(ws: ClientConnection, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Every message until none arrives for *quiet* seconds."""
    out = []
    while True:
        try:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))
        except asyncio.TimeoutError:
            return out


def open_stream(url: str, **kwargs: Any) -> connect:
    """A websockets client with an unbounded receive queue.

    With the default ``max_queue=16`` a client that stops reading pauses its transport, so its
    ``close()`` never sees the server's close frame and waits ``close_timeout`` (10 s).
    """
    return connect(url, max_queue=None, **kwargs)
