"""Python clients of the ``/_sim/`` control API: :class:`SimulatorControl` (sync) and
:class:`AsyncSimulatorControl` (async), with the same method names.

Both build the same ``(method, path, params)`` calls (see :class:`_Calls`) and differ only in
sending, so a switch is spelled once. Parameters are JSON-encoded into the query string (see
``control_api``). Use the async one from a coroutine running on the simulator's own event loop
(a sync call there would deadlock).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

Call = tuple[str, str, dict[str, str]]


def _call(method: str, name: str, **params: Any) -> Call:
    return method, f"/_sim/{name}", {k: json.dumps(v) for k, v in params.items()}


class _Calls:
    """The control API's calls, one method per switch. Subclasses send them."""

    def _send(self, call: Call) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- reads
    def state(self) -> Any:
        """Ground truth: orders (``final`` + ``history``), positions, holdings, GTT, counters..."""
        return self._send(_call("GET", "state"))

    def counters(self) -> Any:
        return self._send(_call("GET", "counters"))

    def issued_codes(self) -> Any:
        """Every stream ``code`` the simulator issued (for leak tests), as ``{"issued_codes": [...]}``."""
        return self._send(_call("GET", "codes"))

    def accounts(self) -> Any:
        """Per account: user id, connections, messages, REST requests and rate-limit peaks."""
        return self._send(_call("GET", "accounts"))

    # -- faults
    def set_faults(self, **switches: Any) -> Any:
        """Set fault switches by name (see ``faults.Faults``); ``None`` restores a default."""
        return self._send(_call("POST", "faults", **switches))

    def clear_faults(self) -> Any:
        return self._send(_call("POST", "faults", clear=True))

    def drop_every(self, n: int, mode: int | str = 1011) -> Any:
        return self.set_faults(drop_every=n, drop_mode=mode)

    def drop_probability(self, p: float, mode: int | str = 1011) -> Any:
        return self.set_faults(drop_probability=p, drop_mode=mode)

    def hang(self, on: bool = True) -> Any:
        """Silent hang: no messages, no pings, no reading (so no pongs either)."""
        return self.set_faults(hang=on)

    def stop_pings(self, on: bool = True) -> Any:
        return self.set_faults(stop_pings=on)

    def ping_interval(self, seconds: float | None) -> Any:
        return self.set_faults(ping_interval=seconds)

    def duplicate(self, probability: float) -> Any:
        return self.set_faults(duplicate_probability=probability)

    def reorder(self, window: int) -> Any:
        return self.set_faults(reorder_window=window)

    def delay(self, seconds: float) -> Any:
        return self.set_faults(delay=seconds)

    def fail_authorize(self, status: int, count: int = 1, retry_after: float | None = None) -> Any:
        return self.set_faults(
            authorize_fail_status=status, authorize_fail_count=count, retry_after=retry_after
        )

    def fail_rest(self, status: int, count: int = 1, retry_after: float | None = None) -> Any:
        return self.set_faults(rest_fail_status=status, rest_fail_count=count, retry_after=retry_after)

    def slow_responses(self, seconds: float) -> Any:
        return self.set_faults(rest_delay=seconds)

    def malformed_every(self, n: int) -> Any:
        return self.set_faults(malformed_every=n)

    def unknown_type_every(self, n: int) -> Any:
        return self.set_faults(unknown_type_every=n)

    def oversized_every(self, n: int, size: int = 2 * 1024 * 1024) -> Any:
        return self.set_faults(oversized_every=n, oversized_bytes=size)

    def authorize_keys(self, mode: str) -> Any:
        """``"both"``, ``"snake"`` (``authorized_redirect_uri`` only) or ``"camel"`` only."""
        return self.set_faults(authorize_keys=mode)

    def refuse_handshakes(self, n: int) -> Any:
        return self.set_faults(refuse_handshakes=n)

    def expire_token(self, at: float | None = None) -> Any:
        """Expire the token at epoch seconds *at* (now if ``None``): 401s, and open sockets close (1008)."""
        return self.set_faults(token_expires_at=time.time() if at is None else at)

    # -- market
    def market(self, **params: Any) -> Any:
        """``rate=`` updates/s, ``running=``, ``steps=`` (advance now), ``quiesce=``, ``timeout=``."""
        return self._send(_call("POST", "market", **params))

    def start_market(self, rate: float | None = None) -> Any:
        return self.market(running=True, **({} if rate is None else {"rate": rate}))

    def stop_market(self) -> Any:
        return self.market(running=False)

    def step(self, n: int = 1) -> Any:
        """Advance the model *n* steps synchronously (the answer comes after they are queued)."""
        return self.market(steps=n)

    def quiesce(self, timeout: float = 10.0) -> Any:
        """Stop the market and wait until every queued message is written (``drained`` says if it was)."""
        return self.market(quiesce=True, timeout=timeout)

    def flood(self, count: int) -> Any:
        return self._send(_call("POST", "flood", count=count))

    def disconnect(self, mode: int | str = 1011) -> Any:
        return self._send(_call("POST", "disconnect", mode=mode))

    def requests(self, *, enforce: bool | None = None, reset: bool = False) -> Any:
        """Per-account request counts and peaks (``/_sim/requests``); optionally switch 429s on/off
        or clear the counts first (see ``simulator/history.py``)."""
        params: dict[str, Any] = {} if enforce is None else {"enforce": enforce}
        if reset:
            params["reset"] = True
        return self._send(_call("POST" if params else "GET", "requests", **params))

    def reset(self, seed: int | None = None, scenario: str | None = None) -> Any:
        params: dict[str, Any] = {}
        if seed is not None:
            params["seed"] = seed
        if scenario is not None:
            params["scenario"] = scenario
        return self._send(_call("POST", "reset", **params))


def _result(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(f"simulator control call {response.request.url.path} failed: {response.text}")
    return response.json()


class SimulatorControl(_Calls):
    """Sync control client: ``SimulatorControl("http://127.0.0.1:8765").drop_every(5)``."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def _send(self, call: Call) -> Any:
        method, path, params = call
        return _result(self._client.request(method, path, params=params))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SimulatorControl({self.base_url!r})"


class AsyncSimulatorControl(_Calls):
    """Async control client; every method returns an awaitable."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout

    async def _send(self, call: Call) -> Any:
        method, path, params = call
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self._timeout, trust_env=False
        ) as client:
            return _result(await client.request(method, path, params=params))

    def __repr__(self) -> str:
        return f"AsyncSimulatorControl({self.base_url!r})"
