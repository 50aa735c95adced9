"""Per-connection writer and idle pinger, where the stream faults happen.

The writer has a fast path (no stream fault on: pop, send, count) so that a flood is limited by the
socket, not by fault bookkeeping, and a slow path that applies, per message: delay, hang, reorder
window, duplicates, injected bad frames and drops.

Both loops get the server's state through :class:`SenderContext` (the server satisfies it) and read
it anew at every use, because the control API replaces the fault switches and a reset replaces
the counters and the fault generator. A drop closes the :class:`Client` through its own
:meth:`~airflow_provider_upstox.simulator.connections.Client.drop`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Protocol

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from airflow_provider_upstox.simulator.connections import Client, Counters
from airflow_provider_upstox.simulator.faults import Faults

log = logging.getLogger(__name__)

MALFORMED_FRAME = b'{"update_type": "order", "order_id": "2501060010000'  # truncated JSON
_REORDER_WAIT = 0.05
_BATCH = 512  # frames per TCP write on the fast path


class SenderContext(Protocol):
    """What the writer and the pinger read from the simulator (current values, read at each use)."""

    @property
    def faults(self) -> Faults: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def fault_rng(self) -> random.Random: ...
    @property
    def user_id(self) -> str: ...
    @property
    def ping_interval(self) -> float: ...
    @property
    def ping_timeout(self) -> float: ...
    @property
    def stamp_frames(self) -> bool: ...


async def send_batch(ws: ServerConnection, frames: list[bytes]) -> None:
    """Send text frames with one transport write (plus one drain) instead of one per frame.

    On the wire this is identical to sending them one by one; it only saves per-frame syscalls and
    awaits, so that a flood is limited by the client, not by the simulator. ``send_context`` checks
    the connection state and raises ``ConnectionClosed`` exactly as ``send()`` does.
    """
    async with ws.send_context():
        for frame in frames:
            ws.protocol.send_text(frame)
        ws.transport.write(b"".join(ws.protocol.data_to_send()))


def stamp(frames: list[bytes]) -> list[bytes]:
    """Each frame with ``"sim_sent_us"``, the wall-clock send time, appended (for latency benches)."""
    tail = b',"sim_sent_us":%d}' % (time.time_ns() // 1000)
    return [frame[:-1] + tail if frame.endswith(b"}") else frame for frame in frames]


def unknown_type_frame(user_id: str, n: int) -> bytes:
    """A well-formed message of an update type Upstox has not documented (clients must keep it)."""
    return msgspec.json.encode(
        {"update_type": "margin_update", "user_id": user_id, "available_margin": 10_000.5 + n, "seq_hint": n}
    )


def oversized_frame(frame: bytes, size: int) -> bytes:
    """A copy of a real message padded with an unknown field up to *size* bytes."""
    pad = max(0, size - len(frame) - 16)
    return frame[:-1] + b', "padding": "' + b"x" * pad + b'"}'


async def write_loop(sim: SenderContext, client: Client) -> None:
    """Send the client's queued messages until the connection closes."""
    ws, pending, counters = client.ws, client.pending, sim.counters
    try:
        while True:
            if not pending or sim.faults.hang:
                if sim.faults.hang and pending:
                    counters.lost_in_hang += len(pending)
                    pending.clear()
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            if not sim.faults.stream_active:
                n = min(len(pending), _BATCH)
                frames = [pending.popleft()[1] for _ in range(n)]
                if sim.stamp_frames:
                    frames = stamp(frames)
                await send_batch(ws, frames)
                counters.sent += n
                client.model_sent += n
                client.last_activity = time.monotonic()
                continue
            await _send_with_faults(sim, client)
    except ConnectionClosed:
        pass


async def _send_with_faults(sim: SenderContext, client: Client) -> None:
    f, pending, rng, counters = sim.faults, client.pending, sim.fault_rng, sim.counters
    if f.reorder_window > 1:
        if len(pending) < f.reorder_window:
            await asyncio.sleep(_REORDER_WAIT)  # give the window a chance to fill
        batch = [pending.popleft() for _ in range(min(f.reorder_window, len(pending)))]
        order = list(range(len(batch)))
        rng.shuffle(order)
        counters.reordered += sum(1 for pos, idx in enumerate(order) if pos != idx)
        batch = [batch[i] for i in order]
    else:
        batch = [pending.popleft()]
    for produced_at, frame in batch:
        if f.delay:
            wait = produced_at + f.delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            counters.delayed += 1
        if f.hang or client.closing:
            counters.lost_in_hang += 1
            continue
        await client.ws.send(frame, text=True)
        counters.sent += 1
        client.model_sent += 1
        client.last_activity = time.monotonic()
        if f.duplicate_probability and rng.random() < f.duplicate_probability:
            await client.ws.send(frame, text=True)
            counters.sent += 1
            counters.duplicated += 1
        await _inject(sim, client, frame)
        n = client.model_sent
        if (f.drop_every and n % f.drop_every == 0) or (
            f.drop_probability and rng.random() < f.drop_probability
        ):
            counters.dropped_connections += 1
            counters.lost_on_disconnect += len(pending)
            pending.clear()
            log.info("fault: dropping a stream connection (%s) after %d messages", f.drop_mode, n)
            client.drop(f.drop_mode)
            return


async def _inject(sim: SenderContext, client: Client, frame: bytes) -> None:
    f, n, counters, ws = sim.faults, client.model_sent, sim.counters, client.ws
    if f.malformed_every and n % f.malformed_every == 0:
        await ws.send(MALFORMED_FRAME, text=True)
        counters.malformed_sent += 1
    if f.unknown_type_every and n % f.unknown_type_every == 0:
        await ws.send(unknown_type_frame(sim.user_id, n), text=True)
        counters.unknown_type_sent += 1
    if f.oversized_every and n % f.oversized_every == 0:
        await ws.send(oversized_frame(frame, f.oversized_bytes), text=True)
        counters.oversized_sent += 1


async def ping_loop(sim: SenderContext, client: Client) -> None:
    """Ping the client after ``ping_interval`` idle seconds; close with 1011 if no pong comes back."""
    ws = client.ws
    try:
        while True:
            interval = sim.faults.ping_interval or sim.ping_interval
            await asyncio.sleep(max(0.01, min(interval / 4, 1.0)))
            if sim.faults.stop_pings or sim.faults.hang or client.closing:
                continue
            if time.monotonic() - client.last_activity < interval:
                continue
            waiter = await ws.ping()
            sim.counters.pings_sent += 1
            client.last_activity = time.monotonic()
            try:
                await asyncio.wait_for(waiter, sim.ping_timeout)
            except asyncio.TimeoutError:
                log.info("stream client did not answer a ping within %.1f s: closing", sim.ping_timeout)
                await ws.close(1011, "keepalive ping timeout")
                return
    except ConnectionClosed:
        pass
