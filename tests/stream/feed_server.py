"""A tiny real WebSocket feed on loopback, for the stream client's fault tests.

Each accepted connection runs the next *script* (an async function of the server connection), so a
test states exactly what the server does on its 1st, 2nd... connection. The simulator covers the
realistic end-to-end behaviour; this covers frame-level faults precisely.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

Script = Callable[[ServerConnection], Awaitable[None]]


def order(order_id: str, status: str = "open", **extra: Any) -> str:
    return json.dumps({"update_type": "order", "order_id": order_id, "status": status, **extra})


@dataclass
class FeedServer:
    port: int = 0
    scripts: list[Script] = field(default_factory=list)
    default: Script | None = None
    codes: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    async def authorize(self) -> str:
        code = f"SECRETCODE{next(self._counter)}"
        self.codes.append(code)
        return f"ws://127.0.0.1:{self.port}/feed?requestId=req-{code}&code={code}"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        index = len(self.paths) - 1
        script = self.scripts[index] if index < len(self.scripts) else self.default
        try:
            if script is not None:
                await script(ws)
            else:
                await ws.wait_closed()
        finally:
            self.close_codes.append(ws.close_code)


@asynccontextmanager
async def feed_server(
    *scripts: Script, default: Script | None = None, **kw: Any
) -> AsyncIterator[FeedServer]:
    server = FeedServer(scripts=list(scripts), default=default)
    async with serve(server._handler, "127.0.0.1", 0, **kw) as ws_server:
        server.port = next(iter(ws_server.sockets)).getsockname()[1]
        yield server
        ws_server.close(close_connections=True)


async def hold(ws: ServerConnection) -> None:
    """Keep the connection open until the client closes it."""
    await ws.wait_closed()


def send_then(frames: list[str | bytes], then: Script | None = hold, delay: float = 0.0) -> Script:
    async def script(ws: ServerConnection) -> None:
        if delay:
            await asyncio.sleep(delay)
        for frame in frames:
            await ws.send(frame)
        if then is not None:
            await then(ws)

    return script
