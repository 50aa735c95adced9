"""Stream client read path: updates/s decoded and batched by ``PortfolioStreamClient``.

Usage: ``python bench/stream_client_throughput.py [--count 40000] [--runs 5] [--quick]``

One simulator process (``--scenario flood``) floods the client with ``count`` model messages
(``POST /_sim/flood``); the client in this process decodes them into its buffer and the consumer
takes batches (``next_sized_batch``) until it has them all. Three readers, same run, interleaved:

- public: the client as shipped; it takes every message already received with ``recv()`` under an
  expired ``asyncio.timeout`` (websockets' public API only);
- private queue: the reader the client had before, which peeked at websockets' internal frame
  queue (``recv_messages.frames``) to know when to stop; the baseline of the ratio;
- one per chunk: no draining at all, one ``recv()`` per chunk (what draining buys).

Two figures per reader: the flood end to end, updates per second from the first update consumed
to the last (wall clock, and per CPU second of this process), and the reader alone on frames that
websockets has already received (all of them queued before it starts: its own CPU cost of taking,
decoding and appending, which is what the private queue was used for; the least noisy figure).
Medians of ``runs`` (and the best, for the reader alone). A ratio public / private queue near 1
means the public API costs nothing measurable.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_upstox.stream import client as stream_client
from airflow_provider_upstox.stream.client import PortfolioStreamClient
from bench.simulator_throughput import TOKEN, free_port, start_simulator

AUTHORIZE = "/v2/feed/portfolio-stream-feed/authorize"


class PrivateQueueClient(PortfolioStreamClient):
    """The reader as it was before: drains while websockets' private frame queue is not empty."""

    async def _read(self, ws: Any, epoch: int) -> None:
        buffer, held_flushed = self._buffer, self._held_flushed
        frames_queue = getattr(getattr(ws, "recv_messages", None), "frames", None)
        queued = frames_queue if isinstance(frames_queue, Sized) else None
        recv = ws.recv
        while True:
            frames = [await recv(False)]
            try:
                if queued is not None:
                    held = self._held
                    room = buffer.maxsize - (len(buffer) if held is None else len(held[0]))
                    limit = min(stream_client._CHUNK, room)
                    while len(queued) and len(frames) < limit:
                        frames.append(await recv(False))
            finally:
                self._deliver(frames, epoch)
            if self._held is not None:
                if len(self._held[0]) >= buffer.maxsize:
                    await held_flushed.wait()
            elif len(buffer) >= buffer.maxsize:
                await buffer.wait_for_space()


class OnePerChunkClient(PortfolioStreamClient):
    """No draining: one ``recv()`` per chunk, so one decode call and one buffer append per message."""

    async def _read(self, ws: Any, epoch: int) -> None:
        buffer = self._buffer
        while True:
            frames = [await ws.recv(False)]
            self._deliver(frames, epoch)
            if len(buffer) >= buffer.maxsize:
                await buffer.wait_for_space()


READERS: dict[str, type[PortfolioStreamClient]] = {
    "public (recv + expired timeout)": PortfolioStreamClient,
    "private queue (before)": PrivateQueueClient,
    "one recv per chunk": OnePerChunkClient,
}


async def one_run(base: str, cls: type[PortfolioStreamClient], count: int) -> tuple[float, float]:
    """Updates per wall-clock second and per CPU second of this process (the client's side)."""
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=60) as http:

        async def authorize() -> str:
            r = await http.get(
                AUTHORIZE,
                params={"update_types": "order,position,holding,gtt_order"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            return str(r.json()["data"]["authorized_redirect_uri"])

        async def no_snapshot(update_type: str) -> list[dict[str, Any]]:
            return []

        client = cls(authorize, no_snapshot, snapshot_on_connect=False, idle_timeout=None, queue_size=10_000)
        async with client:
            for _ in range(1000):
                if client.connected:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the server has registered the connection
            flood = asyncio.create_task(http.post("/_sim/flood", params={"count": str(count)}))
            first, _ = await client.next_sized_batch(1, 0.0, timeout=30)
            start, cpu_start, got = time.perf_counter(), time.process_time(), len(first)
            while got < count:
                batch, _ = await client.next_sized_batch(5000, 0.0, timeout=30)
                if not batch:
                    raise RuntimeError(f"stalled after {got} of {count} updates")
                got += len(batch)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            await flood
        return (count - 1) / elapsed, (count - 1) / cpu


async def drain_run(base: str, cls: type[PortfolioStreamClient], count: int) -> float:
    """CPU seconds the reader needs for *count* frames that websockets has already received.

    The flood is received into websockets' queue (a high ``max_queue``) before the reader starts,
    so nothing waits for the network: this is the reader's own cost (take, decode, append), the
    part the private queue was used to speed up. Runs the client's reader directly. The reader does
    not yield until the queue is empty, so its CPU time is its cost, without the time other
    processes of a shared machine took the core away.
    """
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=60) as http:
        r = await http.get(
            AUTHORIZE,
            params={"update_types": "order,position,holding,gtt_order"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        url = str(r.json()["data"]["authorized_redirect_uri"])

        async def unused(*_: Any) -> Any:
            raise AssertionError("not called")

        client = cls(unused, unused, snapshot_on_connect=False, queue_size=count + 1, max_queue=4 * count)
        ws = await client._open(url)
        try:
            await asyncio.sleep(0.1)  # the server has registered the connection
            await http.post("/_sim/flood", params={"count": str(count)})
            for _ in range(3000):  # until every frame has left the simulator...
                if (await http.get("/_sim/counters")).json()["sent"] >= count:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # ...and reached websockets' queue on this side
            start = time.process_time()
            reader = asyncio.create_task(client._read(ws, 1))
            # the buffer wakes its consumer once all are in (the client's own task is never started)
            batch, _ = await client._buffer.get_sized_batch(count, max_wait=60.0, timeout=60.0)
            elapsed = time.process_time() - start
            assert len(batch) == count, len(batch)
            reader.cancel()
            await asyncio.wait([reader])
        finally:
            ws.transport.abort()
        await http.post("/_sim/reset")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=40_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=5, help="runs of each reader; medians are reported")
    parser.add_argument("--quick", action="store_true", help="10,000 messages, 3 runs")
    args = parser.parse_args()
    count, runs = (10_000, 3) if args.quick else (args.count, args.runs)

    port = free_port()
    proc = start_simulator(port)
    base = f"http://127.0.0.1:{port}"
    wall: dict[str, list[float]] = {name: [] for name in READERS}
    cpu: dict[str, list[float]] = {name: [] for name in READERS}
    drain: dict[str, list[float]] = {name: [] for name in READERS}
    try:
        for _ in range(runs):  # interleaved, so that a noisy moment hits every reader alike
            for name, cls in READERS.items():
                per_wall, per_cpu = asyncio.run(one_run(base, cls, count))
                wall[name].append(per_wall)
                cpu[name].append(per_cpu)
                drain[name].append(count / asyncio.run(drain_run(base, cls, count)))
    finally:
        proc.terminate()
        proc.wait()

    median = statistics.median
    print(f"messages per run: {count}, runs: {runs}")
    print("flood end to end: updates/s wall clock and per CPU second of this process (medians);")
    print("reader alone on already-received frames: updates per CPU second (median and best)")
    print(f"{'reader':34}  {'flood wall':>10}  {'flood CPU':>10}  {'queued med':>10}  {'queued best':>11}")
    for name in READERS:
        print(
            f"{name:34}  {median(wall[name]):10,.0f}  {median(cpu[name]):10,.0f}"
            f"  {median(drain[name]):10,.0f}  {max(drain[name]):11,.0f}"
        )
    before = "private queue (before)"
    for name in READERS:
        if name != before:
            print(
                f"ratio {name} / private queue: flood {median(wall[name]) / median(wall[before]):.2f} wall, "
                f"{median(cpu[name]) / median(cpu[before]):.2f} CPU; queued frames "
                f"{median(drain[name]) / median(drain[before]):.2f} median, "
                f"{max(drain[name]) / max(drain[before]):.2f} best"
            )


if __name__ == "__main__":
    main()
