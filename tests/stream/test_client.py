"""PortfolioStreamClient against a real loopback WebSocket server (frame-level faults)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from airflow_provider_upstox.exceptions import UpstoxAuthenticationError, UpstoxServerError
from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.stream import PortfolioStreamClient, no_delays
from tests.stream.feed_server import feed_server, hold, order, send_then

pytestmark = pytest.mark.timeout(30)


class Snapshots:
    """REST snapshot stand-in: rows per update type, optionally slow, counting calls."""

    def __init__(self, rows: dict[str, list[dict[str, Any]]] | None = None, delay: float = 0.0) -> None:
        self.rows = rows or {}
        self.delay = delay
        self.calls: list[str] = []
        self.error: Exception | None = None

    async def __call__(self, update_type: str) -> list[dict[str, Any]]:
        self.calls.append(update_type)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return list(self.rows.get(update_type, []))


def make_client(server: Any, snapshots: Snapshots | None = None, **kw: Any) -> PortfolioStreamClient:
    kw.setdefault("reconnect_delays", no_delays)
    kw.setdefault("min_reconnect_delay", 0.01)
    kw.setdefault("update_types", ["order"])
    return PortfolioStreamClient(server.authorize, snapshots or Snapshots(), **kw)


async def take(client: PortfolioStreamClient, n: int, timeout: float = 10.0) -> list[Update]:
    out: list[Update] = []

    async def fill() -> None:
        while len(out) < n:
            out.extend(await client.next_batch(n - len(out), 0.01))

    await asyncio.wait_for(fill(), timeout)  # not asyncio.timeout: the tests run on Python 3.10 too
    return out


async def drain(client: PortfolioStreamClient) -> None:
    """Consume until the client raises."""
    while True:
        await client.next_batch(100, 0.01)


async def test_snapshot_first_then_live_messages_received_during_snapshot() -> None:
    snapshots = Snapshots({"order": [{"order_id": "S1", "status": "complete", "userId": "x"}]}, delay=0.2)
    async with (
        feed_server(send_then([order("L1"), order("L2")], delay=0.05)) as server,
        make_client(server, snapshots, account="AB1") as client,
    ):
        updates = await take(client, 3)
    assert [(u.source, u.data["order_id"]) for u in updates] == [
        ("snapshot", "S1"),
        ("stream", "L1"),
        ("stream", "L2"),
    ]
    assert "userId" not in updates[0].data  # deprecated duplicate stripped
    assert all(u.connection_epoch == 1 and u.account == "AB1" for u in updates)
    seqs = [u.seq for u in updates]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    # A snapshot row is dated when its request began: before the live messages were received.
    assert updates[0].received_at_us <= updates[1].received_at_us
    assert client.stats.snapshots == 1
    assert client.stats.snapshot_rows == 1
    assert client.stats.messages == 2


async def test_reconnects_after_drop_with_fresh_authorize_and_snapshot() -> None:
    snapshots = Snapshots({"order": [{"order_id": "S", "status": "open"}]})
    async with (
        feed_server(
            send_then([order("A")], then=None), send_then([order("B")], then=None), default=hold
        ) as server,
        make_client(server, snapshots) as client,
    ):
        updates = await take(client, 5)
        assert client.stats.reconnects >= 2
    assert [(u.connection_epoch, u.source, u.data["order_id"]) for u in updates[:5]] == [
        (1, "snapshot", "S"),
        (1, "stream", "A"),
        (2, "snapshot", "S"),
        (2, "stream", "B"),
        (3, "snapshot", "S"),
    ]
    assert len(set(server.codes)) == len(server.codes) >= 3  # a new single-use code per connect


async def test_malformed_unknown_and_extra_fields() -> None:
    frames: list[str | bytes] = [
        "not json",
        "[1, 2]",
        json.dumps({"no_type": 1}),
        b"\xff\xfe",
        json.dumps({"update_type": "margin", "value": 3}),
        order("A", brand_new_field={"x": [1]}, tradingsymbol="OLD", trading_symbol="NEW"),
    ]
    async with feed_server(send_then(frames)) as server, make_client(server) as client:
        updates = await take(client, 2)
        assert client.stats.decode_errors == 4
    assert updates[0].update_type == "margin"
    assert updates[0].data == {"update_type": "margin", "value": 3}
    assert updates[1].data["brand_new_field"] == {"x": [1]}
    assert "tradingsymbol" not in updates[1].data
    assert updates[1].data["trading_symbol"] == "NEW"


async def test_authentication_failure_surfaces_without_retry_storm() -> None:
    calls = 0

    async def authorize() -> str:
        nonlocal calls
        calls += 1
        raise UpstoxAuthenticationError("token refused", status_code=401, error_code="UDAPI100050")

    client = PortfolioStreamClient(authorize, Snapshots(), reconnect_delays=no_delays, min_reconnect_delay=0)
    with pytest.raises(UpstoxAuthenticationError):
        await client.next_batch(10, 0.01)
    with pytest.raises(UpstoxAuthenticationError):  # stays failed; the caller decides when to retry
        await client.next_batch(10, 0.01)
    await asyncio.sleep(0.05)
    assert calls == 1
    assert client.stats.auth_failures == 1
    await client.aclose()


async def test_snapshot_auth_failure_is_fatal_but_server_error_is_retried() -> None:
    snapshots = Snapshots()
    snapshots.error = UpstoxServerError("boom", status_code=503)
    async with (
        feed_server(default=send_then([order("A")])) as server,
        make_client(server, snapshots) as client,
    ):
        await asyncio.sleep(0.2)
        assert client.stats.connects >= 2
        assert client.pending >= 1
        snapshots.error = UpstoxAuthenticationError("expired", status_code=401)
        with pytest.raises(UpstoxAuthenticationError):
            await drain(client)


async def test_accept_then_drop_does_not_spin() -> None:
    async def drop(ws: ServerConnection) -> None:
        await ws.close()

    async with feed_server(default=drop) as server, make_client(server, min_reconnect_delay=0.1):
        await asyncio.sleep(0.55)
    assert 3 <= len(server.paths) <= 7


async def test_idle_connection_is_replaced() -> None:
    async with (
        feed_server(default=hold, ping_interval=None) as server,
        make_client(server, idle_timeout=0.2, ping_interval=None) as client,
    ):
        await asyncio.sleep(0.7)
        assert client.stats.idle_timeouts >= 1
        assert client.stats.connects >= 2


async def test_oversized_frame_reconnects() -> None:
    async with (
        feed_server(send_then(["x" * 5000]), default=send_then([order("A")])) as server,
        make_client(server, max_frame_size=1000) as client,
    ):
        updates = await take(client, 1)
        assert client.stats.last_close_code == 1009 or client.stats.reconnects >= 1
    assert updates[0].data["order_id"] == "A"


async def test_back_pressure_bounds_the_buffer_and_loses_nothing() -> None:
    frames: list[str | bytes] = [order(str(i)) for i in range(2000)]
    async with feed_server(send_then(frames)) as server, make_client(server, queue_size=50) as client:
        await asyncio.sleep(0.3)
        assert client.pending <= 100  # buffer bound (+ one held batch at most)
        updates = await take(client, 2000)
    assert [u.data["order_id"] for u in updates] == [str(i) for i in range(2000)]


async def test_aclose_closes_cleanly_and_is_cancel_safe() -> None:
    async with feed_server(default=hold) as server:
        client = make_client(server)
        waiter = asyncio.create_task(client.next_batch(10, 0.01))
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert client.connected
        await client.aclose()
        assert not client.connected
        await asyncio.sleep(0.05)
    assert server.close_codes == [1000]
    async for _ in client:  # a closed client ends iteration
        pytest.fail("closed client yielded")


async def test_stream_code_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        feed_server(send_then([order("A")], then=None), default=hold) as server,
        make_client(server) as client,
    ):
        await take(client, 1)
        while client.stats.connects < 2:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.01)
    assert len(server.codes) >= 2
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))
    assert "requestId=***" in ours  # the websockets request line was logged, redacted
    for code in server.codes:
        assert code not in ours
