"""Server side of the ``/_sim/`` control API.

``websockets`` parses requests without bodies (it refuses a non-zero ``Content-Length``), so POST
parameters travel in the query string, each value JSON-encoded (``?drop_every=5&drop_mode="reset"``);
a value that is not JSON is taken as a plain string, which keeps ``curl -X POST`` usable. Answers
are JSON.

- ``GET /_sim/state``: ground truth (orders with histories, positions, holdings, GTT, trades),
  counters, faults, market, issued codes. ``GET /_sim/counters``: counters only.
  ``GET /_sim/codes``: ``{"issued_codes": [...]}``, every code ever issued.
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
from typing import TYPE_CHECKING, Any

from websockets.http11 import Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.faults import DROP_MODES, SCENARIOS

if TYPE_CHECKING:
    from airflow_provider_upstox.simulator.server import UpstoxSimulator


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
    """Routes ``/_sim/...`` requests to the simulator."""

    def __init__(self, sim: UpstoxSimulator) -> None:
        self.sim = sim

    async def handle(self, method: str, path: str, query: dict[str, list[str]]) -> Response:
        params = _params(query)
        name = path[len("/_sim/") :].strip("/")
        getters = {"state": self.state, "counters": self.counters, "codes": self.codes}
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
                return h.json_response(200, self.summary())
        except (ValueError, TypeError) as exc:
            return _bad(str(exc))
        return h.json_response(404, {"status": "error", "message": f"no control endpoint /_sim/{name}"})

    def faults(self, params: dict[str, Any]) -> Response:
        sim = self.sim
        was_hanging, old_expiry = sim.faults.hang, sim.faults.token_expires_at
        if params.pop("clear", False):
            sim.faults = type(sim.faults)()
        sim.faults.update(params)
        if sim.faults.hang != was_hanging:
            sim.set_hang(sim.faults.hang)
        if sim.faults.token_expires_at != old_expiry:
            sim.schedule_token_expiry()
        for client in sim.clients:
            client.wakeup.set()
        return h.json_response(200, sim.faults.as_dict())

    async def market(self, params: dict[str, Any]) -> dict[str, Any]:
        sim = self.sim
        produced = 0
        if "rate" in params:
            rate = float(params["rate"])
            if rate < 0:
                raise ValueError("rate must be >= 0")
            sim.rate = rate
        if "running" in params:
            sim.running = bool(params["running"])
        sim.market_changed.set()
        if "steps" in params:
            produced = sim.steps(int(params["steps"]))
        drained = None
        if params.get("quiesce"):
            drained = await sim.quiesce(float(params.get("timeout", 10.0)))
        return {**self.summary(), "produced": produced, "drained": drained}

    def summary(self) -> dict[str, Any]:
        sim = self.sim
        return {
            "seed": sim.seed,
            "scenario": sim.scenario,
            "running": sim.running,
            "rate": sim.rate,
            "steps": sim.model.steps,
            "connected": len(sim.clients),
        }

    def counters(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.sim.counters), "connected": len(self.sim.clients)}

    def codes(self) -> dict[str, Any]:
        return {"issued_codes": list(self.sim.issued_codes)}

    def state(self) -> dict[str, Any]:
        sim = self.sim
        return {
            **sim.model.ground_truth(),
            "counters": self.counters(),
            "faults": sim.faults.as_dict(),
            "market": self.summary(),
            "issued_codes": list(sim.issued_codes),
            "scenarios": {name: s.description for name, s in SCENARIOS.items()},
        }
