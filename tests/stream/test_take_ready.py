"""The reader's drain (``_take_ready``) on a real websockets connection: public API only.

It must take every message already received in one call, return as soon as none is left (instead
of waiting for the network), and lose nothing: not the next message, not a fragmented message
whose last fragment is still on its way.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from airflow_provider_upstox.stream.client import _take_ready
from tests.stream.feed_server import feed_server, order

pytestmark = [
    pytest.mark.timeout(30),
    # Without asyncio.timeout the drain is off by design and the reader awaits each message.
    pytest.mark.skipif(sys.version_info < (3, 11), reason="_take_ready drains only on Python >= 3.11"),
]


async def _all_received(sent: asyncio.Event) -> None:
    """Once the server has sent everything, give loopback time to deliver it to websockets' queue."""
    await asyncio.wait_for(sent.wait(), 10.0)
    await asyncio.sleep(0.3)


async def test_takes_every_received_message_and_returns_without_waiting() -> None:
    go, sent = asyncio.Event(), asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        for i in range(300):
            await ws.send(order(f"A{i}"))
        sent.set()
        await go.wait()
        await ws.send(order("LATE"))
        await ws.wait_closed()

    async with feed_server(script) as server, connect(f"ws://127.0.0.1:{server.port}/", max_queue=1000) as ws:
        first = await ws.recv(False)
        await _all_received(sent)
        frames = [first]
        await asyncio.wait_for(_take_ready(ws, frames, 512), 2.0)  # returns: nothing waits
        assert [f'"A{i}"' in f.decode() for i, f in enumerate(frames)] == [True] * 300
        go.set()
        assert b'"LATE"' in await asyncio.wait_for(ws.recv(False), 5.0)  # the next one is not lost


async def test_stops_at_the_limit_and_leaves_the_rest_queued() -> None:
    sent = asyncio.Event()
    async with (
        feed_server(lambda ws: _send_many(ws, 100, sent)) as server,
        connect(f"ws://127.0.0.1:{server.port}/", max_queue=1000) as ws,
    ):
        frames = [await ws.recv(False)]
        await _all_received(sent)
        await _take_ready(ws, frames, 40)
        assert len(frames) == 40
        rest = [frames[-1]]
        await _take_ready(ws, rest, 1000)
        assert len(rest) == 1 + 60
        assert b'"M99"' in rest[-1]


async def _send_many(ws: ServerConnection, count: int, sent: asyncio.Event) -> None:
    for i in range(count):
        await ws.send(order(f"M{i}"))
    sent.set()
    await ws.wait_closed()


async def test_a_half_received_fragmented_message_is_returned_whole_later() -> None:
    rest_may_go, sent = asyncio.Event(), asyncio.Event()
    big = order("F", tag="x" * 3000)

    async def fragments() -> AsyncIterator[str]:
        yield big[:1000]
        sent.set()
        await rest_may_go.wait()
        for i in range(1000, len(big), 1000):
            yield big[i : i + 1000]

    async def script(ws: ServerConnection) -> None:
        for i in range(3):
            await ws.send(order(f"A{i}"))
        await ws.send(fragments())
        await ws.wait_closed()

    async with feed_server(script) as server, connect(f"ws://127.0.0.1:{server.port}/", max_queue=1000) as ws:
        frames = [await ws.recv(False)]
        await _all_received(sent)
        await asyncio.wait_for(_take_ready(ws, frames, 512), 2.0)
        assert [b'"A0"' in frames[0], b'"A1"' in frames[1], b'"A2"' in frames[2]] == [True] * 3
        assert len(frames) == 3  # the first fragment alone is not a message
        rest_may_go.set()
        assert await asyncio.wait_for(ws.recv(False), 5.0) == big.encode()
