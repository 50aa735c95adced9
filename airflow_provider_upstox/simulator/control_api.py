"""Server side of the ``/_sim/`` control API.

``websockets`` parses requests without bodies (it refuses a non-zero ``Content-Length``), so POST
parameters travel in the query string, each value JSON-encoded (``?drop_every=5&drop_mode="reset"``);
a value that is not JSON is taken as a plain string, which keeps ``curl -X POST`` usable. Answers
are JSON.

- ``GET /_sim/state``: ground truth (orders with histories, positions, holdings, GTT, trades),
  counters, faults, market, issued codes. ``GET /_sim/counters``: counters only.
  ``GET /_sim/codes``: ``{"issued_codes": [...]}``, every code ever issued.
- ``GET /_sim/accounts``: per account, user id, connected clients, market steps and messages, REST
  requests, requests over the rate limits and the peak counts per second/minute/30 minutes.
- ``POST /_sim/faults?<switch>=<json>...``: set switches (``null`` = default); ``clear=true`` first
  resets all.
- ``POST /_sim/market?rate=&running=&steps=&quiesce=&timeout=``: rate, start/stop, N synchronous
  steps, quiesce (stop and wait until every queued message is written).
- ``POST /_sim/flood?count=N``: produce N messages and queue them to the connected clients at once.
- ``POST /_sim/disconnect?mode=1011``: drop every stream connection now (1000/1001/1011/"reset").
- ``POST /_sim/reset?seed=&scenario=``: fresh model, faults, counters and codes; closes connections.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol

from websockets.http11 import Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.connections import Counters
from airflow_provider_upstox.simulator.faults import DROP_MODES, SCENARIOS, Faults
from airflow_provider_upstox.simulator.routing import ANY_METHOD, HttpRequest, Route

PREFIX = "/_sim/"


class ControlTarget(Protocol):
    """The simulator as the control API drives it (the server satisfies this)."""

    @property
    def faults(self) -> Faults: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def issued_codes(self) -> list[str]: ...
    @property
    def connected(self) -> int: ...
    def summary(self) -> dict[str, Any]: ...
    def accounts_summary(self) -> list[dict[str, Any]]: ...
    def ground_truth(self) -> dict[str, Any]: ...
    def set_faults(self, changes: dict[str, Any], *, clear: bool = False) -> None: ...
    def set_market(self, *, rate: float | None = None, running: bool | None = None) -> None: ...
    def steps(self, count: int) -> int: ...
    def flood(self, count: int) -> int: ...
    async def quiesce(self, timeout: float = 10.0) -> bool: ...
    def disconnect_all(self, mode: int | str) -> int: ...
    async def reset(self, seed: int | None = None, scenario: str | None = None) -> None: ...


def _params(query: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, values in query.items():
        raw = values[-1]
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _bad(message: str) -> Response:
    return h.json_response(400, {"status": "error", "message": message})


class ControlAPI:
    """Routes ``/_sim/...`` requests to a :class:`ControlTarget`."""

    def __init__(self, sim: ControlTarget) -> None:
        self.sim = sim

    def routes(self) -> list[Route]:
        return [Route(PREFIX, self.route, methods=ANY_METHOD, prefix=True)]

    async def route(self, req: HttpRequest) -> Response:
        return await self.handle(req.method, req.path, req.query)

    async def handle(self, method: str, path: str, query: dict[str, list[str]]) -> Response:
        params = _params(query)
        name = path[len(PREFIX) :].strip("/")
        getters = {
            "state": self.state,
            "counters": self.counters,
            "codes": self.codes,
            "accounts": self.accounts,
        }
        if name in getters:
            return h.json_response(200, getters[name]())
        if method != "POST":
            return _bad(f"use POST for /_sim/{name}")
        try:
            if name == "faults":
                return self.faults(params)
            if name == "market":
                return h.json_response(200, await self.market(params))
            if name == "flood":
                return h.json_response(200, {"queued": self.sim.flood(int(params.get("count", 10_000)))})
            if name == "disconnect":
                mode = params.get("mode", 1011)
                if mode not in DROP_MODES:
                    return _bad(f"mode must be one of {DROP_MODES}")
                return h.json_response(200, {"dropped": self.sim.disconnect_all(mode)})
            if name == "reset":
                await self.sim.reset(params.get("seed"), params.get("scenario"))
                return h.json_response(200, self.sim.summary())
        except (ValueError, TypeError) as exc:
            return _bad(str(exc))
        return h.json_response(404, {"status": "error", "message": f"no control endpoint /_sim/{name}"})

    def faults(self, params: dict[str, Any]) -> Response:
        clear = bool(params.pop("clear", False))
        self.sim.set_faults(params, clear=clear)
        return h.json_response(200, self.sim.faults.as_dict())

    async def market(self, params: dict[str, Any]) -> dict[str, Any]:
        sim = self.sim
        rate = float(params["rate"]) if "rate" in params else None
        if rate is not None and rate < 0:
            raise ValueError("rate must be >= 0")
        sim.set_market(rate=rate, running=bool(params["running"]) if "running" in params else None)
        produced = sim.steps(int(params["steps"])) if "steps" in params else 0
        drained = None
        if params.get("quiesce"):
            drained = await sim.quiesce(float(params.get("timeout", 10.0)))
        return {**sim.summary(), "produced": produced, "drained": drained}

    def counters(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.sim.counters), "connected": self.sim.connected}

    def accounts(self) -> dict[str, Any]:
        return {"accounts": self.sim.accounts_summary()}

    def codes(self) -> dict[str, Any]:
        return {"issued_codes": list(self.sim.issued_codes)}

    def state(self) -> dict[str, Any]:
        sim = self.sim
        return {
            **sim.ground_truth(),
            "counters": self.counters(),
            "faults": sim.faults.as_dict(),
            "market": sim.summary(),
            "issued_codes": list(sim.issued_codes),
            "scenarios": {name: s.description for name, s in SCENARIOS.items()},
        }
