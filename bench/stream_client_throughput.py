"""Stream client read path: updates/s decoded and batched by ``PortfolioStreamClient``.

Usage: ``python bench/stream_client_throughput.py [--count 40000] [--runs 3] [--quick]``

One simulator process (``--scenario flood``) floods the client with ``count`` model messages
(``POST /_sim/flood``); the client in this process decodes them into its buffer and the consumer
takes batches (``next_sized_batch``) until it has them all. Three readers, same run, interleaved:

- public: the client as shipped; it takes every message already received with ``recv()`` under an
  expired ``asyncio.timeout`` (websockets' public API only);
- private queue: the reader the client had before, which peeked at websockets' internal frame
  queue (``recv_messages.frames``) to know when to stop; the baseline of the ratio;
- one per chunk: no draining at all, one ``recv()`` per chunk (what draining buys).

The figure is updates / seconds from the first update consumed to the last (the model encodes
the whole flood before the first is sent, which is not the client's time); the best of
``runs`` is reported with every run. The ratio public / private queue near 1 means the public API
costs nothing measurable.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def one_run(base: str, cls: type[PortfolioStreamClient], count: int) -> float:
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
            start, got = time.perf_counter(), len(first)
            while got < count:
                batch, _ = await client.next_sized_batch(5000, 0.0, timeout=30)
                if not batch:
                    raise RuntimeError(f"stalled after {got} of {count} updates")
                got += len(batch)
            elapsed = time.perf_counter() - start
            await flood
        return (count - 1) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=40_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each reader; the best is reported")
    parser.add_argument("--quick", action="store_true", help="10,000 messages, 2 runs")
    args = parser.parse_args()
    count, runs = (10_000, 2) if args.quick else (args.count, args.runs)

    port = free_port()
    proc = start_simulator(port)
    base = f"http://127.0.0.1:{port}"
    rates: dict[str, list[float]] = {name: [] for name in READERS}
    try:
        for _ in range(runs):  # interleaved, so that a noisy moment hits every reader alike
            for name, cls in READERS.items():
                rates[name].append(asyncio.run(one_run(base, cls, count)))
    finally:
        proc.terminate()
        proc.wait()

    print(f"messages per run: {count}, runs: {runs} (best shown)")
    for name, values in rates.items():
        print(f"{name:34}: {max(values):10,.0f} updates/s   all: {[round(v) for v in values]}")
    public, private = max(rates["public (recv + expired timeout)"]), max(rates["private queue (before)"])
    print(f"{'ratio public / private queue':34}: {public / private:10.2f}")
    print(f"{'ratio one-per-chunk / private':34}: {max(rates['one recv per chunk']) / private:10.2f}")


if __name__ == "__main__":
    main()
