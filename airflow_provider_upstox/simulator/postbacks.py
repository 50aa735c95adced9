"""Postback delivery: order (and GTT) updates POSTed to a configured URL (``docs/PROTOCOL.md`` §7).

Upstox sends every order update to the app's webhook URL as well as over the stream, with the same
JSON, unsigned, and documents no retry. The simulator does the same for the messages its model
produces (whether or not a stream client is connected: postbacks do not depend on the socket), one
attempt each, with faults of their own, independent of the stream's:

- ``drop_probability``: a postback is never sent;
- ``duplicate_probability``: it is sent twice;
- ``delay``: it is sent this many seconds after the update happened;
- ``reorder_window``: postbacks are shuffled within windows of this many (out of order).

``gtt`` switches GTT order postbacks on (Upstox: an app setting, off by default). Control:
``GET /_sim/postbacks`` (settings and counters), ``POST /_sim/postbacks?url="..."&drop_probability=0.1...``
(JSON values in the query string like every ``/_sim/`` call; ``url=null`` stops delivery;
``clear=true`` resets the settings and counters first).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import httpx
from websockets.http11 import Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.model import Emitted
from airflow_provider_upstox.simulator.routing import HttpRequest, Route

log = logging.getLogger(__name__)

POSTBACKS_PATH: Final = "/_sim/postbacks"


@dataclass
class PostbackSettings:
    url: str | None = None
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay: float = 0.0
    reorder_window: int = 0
    gtt: bool = False


@dataclass
class PostbackCounters:
    offered: int = 0  #: model messages of a postback kind while a URL was set
    dropped: int = 0  #: never sent (fault)
    duplicated: int = 0  #: sent twice (fault)
    delivered: int = 0  #: POSTs answered 2xx
    refused: int = 0  #: POSTs answered otherwise
    failed: int = 0  #: POSTs that got no answer
    statuses: dict[str, int] = field(default_factory=dict)


class PostbackSender:
    """Queues the model's order/GTT messages as postbacks and sends them from one task.

    :param seed: seeds the fault choices (same seed, same drops and duplicates).
    """

    def __init__(self, seed: int = 0) -> None:
        self.settings = PostbackSettings()
        self.counters = PostbackCounters()
        self._rng = random.Random(f"postbacks-{seed}")
        self._pending: list[tuple[float, bytes]] = []  # (due monotonic time, body)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set when nothing is queued or in flight
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- producing
    def offer(self, emitted: list[Emitted]) -> None:
        """Queue the postbacks of *emitted* (called for every model step, on the server's loop)."""
        s = self.settings
        if s.url is None:
            return
        kinds = ("order", "gtt_order") if s.gtt else ("order",)
        due = time.monotonic() + s.delay
        batch: list[tuple[float, bytes]] = []
        for msg in emitted:
            if msg.update_type not in kinds:
                continue
            self.counters.offered += 1
            if s.drop_probability and self._rng.random() < s.drop_probability:
                self.counters.dropped += 1
                continue
            batch.append((due, msg.frame))
            if s.duplicate_probability and self._rng.random() < s.duplicate_probability:
                self.counters.duplicated += 1
                batch.append((due, msg.frame))
        if not batch:
            return
        self._pending.extend(batch)
        self._idle.clear()
        if s.reorder_window > 1:
            tail = self._pending[-s.reorder_window :]
            self._rng.shuffle(tail)
            self._pending[-len(tail) :] = tail
        self._wakeup.set()

    # ---------------------------------------------------------------- sending
    def _ensure_task(self) -> None:
        if self.settings.url is not None and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._send_loop())

    async def _send_loop(self) -> None:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            while True:
                if not self._pending:
                    self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                due, body = self._pending[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(min(wait, 0.05))
                    continue
                self._pending.pop(0)
                url = self.settings.url
                if url is None:
                    continue
                await self._post(client, url, body)

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes) -> None:
        c = self.counters
        try:
            response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            c.failed += 1
            log.debug("postback to the configured URL failed: %s", type(exc).__name__)
            return
        key = str(response.status_code)
        c.statuses[key] = c.statuses.get(key, 0) + 1
        if 200 <= response.status_code < 300:
            c.delivered += 1
        else:
            c.refused += 1

    @property
    def backlog(self) -> int:
        """Postbacks queued and not sent yet."""
        return len(self._pending)

    async def drained(self, timeout: float = 10.0) -> bool:
        """Wait until the backlog is sent (``False`` on timeout)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # ---------------------------------------------------------------- control
    def configure(self, changes: dict[str, Any], *, clear: bool = False) -> None:
        """Change the settings (``None`` restores a default); starts the sender when a URL is set.

        :raises ValueError: an unknown setting or a bad value.
        """
        if clear:
            self.settings, self.counters = PostbackSettings(), PostbackCounters()
            self._pending.clear()
            self._idle.set()
        defaults = PostbackSettings()
        for name, value in changes.items():
            if name not in {f.name for f in dataclasses.fields(PostbackSettings)}:
                raise ValueError(f"unknown postback setting {name!r}")
            default = getattr(defaults, name)
            if value is None:
                value = default
            elif name == "url":
                if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                    raise ValueError("url must be an http(s) URL")
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif isinstance(default, int):
                value = int(value)
            else:
                value = float(value)
                if name.endswith("probability") and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1")
            setattr(self.settings, name, value)
        self._ensure_task()

    def summary(self) -> dict[str, Any]:
        settings = dataclasses.asdict(self.settings)
        settings["url"] = None if self.settings.url is None else "(set)"  # holds the secret path key
        return {"settings": settings, "counters": dataclasses.asdict(self.counters), "backlog": self.backlog}

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class PostbackContext(Protocol):
    @property
    def postbacks(self) -> PostbackSender: ...


def routes(ctx: PostbackContext) -> list[Route]:
    async def control(req: HttpRequest) -> Response:
        sender = ctx.postbacks
        if req.method == "POST":
            changes: dict[str, Any] = {}
            for key, values in req.query.items():
                raw = (values or [""])[0]
                try:
                    changes[key] = json.loads(raw)
                except ValueError:
                    changes[key] = raw
            clear = changes.pop("clear", False) is True
            wait = changes.pop("drain", None)
            try:
                sender.configure(changes, clear=clear)
            except ValueError as exc:
                return h.json_response(400, {"error": str(exc)})
            if wait is not None:
                await sender.drained(float(wait))
        return h.json_response(200, sender.summary())

    return [Route(POSTBACKS_PATH, control, frozenset({"GET", "POST"}))]
