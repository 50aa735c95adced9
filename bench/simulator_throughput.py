"""Simulator throughput: model messages per second delivered to one WebSocket client.

Usage: ``python bench/simulator_throughput.py [--count 30000] [--runs 3]``

Two servers, each in its own process, stream the same kind of traffic to the same client code
in this process:

- baseline: a bare ``websockets`` server that sends pre-encoded model frames in a tight loop
  (what the hardware, Python and websockets allow);
- simulator: ``python -m airflow_provider_upstox.simulator --scenario flood``, driven by
  ``POST /_sim/flood?count=N`` (the model produces and encodes N messages, then they are queued).

The client counts frames from the first to the N-th; the figure is N / elapsed. The ratio
simulator/baseline near 1 means the simulator adds nothing over the socket itself. The goal is
>= 20,000 messages/s. The model's own production rate (encode included) is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx
from websockets.asyncio.client import connect

TOKEN = "bench-token-0123456789"
BASELINE_SERVER = r"""
import asyncio, sys
from websockets.asyncio.server import serve
from airflow_provider_upstox.simulator.model import MarketModel

port, count = int(sys.argv[1]), int(sys.argv[2])
model = MarketModel(seed=7)
frames = []
while len(frames) < count:
    frames.extend(e.frame for e in model.step())
frames = frames[:count]

async def handler(ws):
    await ws.recv()  # "go"
    for frame in frames:
        await ws.send(frame, text=True)
    await ws.wait_closed()

async def main():
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, write_limit=2**20):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def receive(ws: object, count: int) -> float:
    """Receive *count* frames; seconds from the first frame to the last."""
    first = await ws.recv(decode=False)  # type: ignore[attr-defined]
    start = time.perf_counter()
    assert first
    for _ in range(count - 1):
        await ws.recv(decode=False)  # type: ignore[attr-defined]
    return time.perf_counter() - start


async def baseline_client(port: int, count: int) -> float:
    async with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        await ws.send("go")
        return count / await receive(ws, count)


def run_baseline(count: int) -> float:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", BASELINE_SERVER, str(port), str(count)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return asyncio.run(baseline_client(port, count))
    finally:
        proc.terminate()
        proc.wait()


async def run_simulator(port: int, count: int) -> float:
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=60) as http:
        auth = await http.get(
            "/v2/feed/portfolio-stream-feed/authorize",
            params={"update_types": "order,position,holding,gtt_order"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        url = auth.json()["data"]["authorized_redirect_uri"]
        async with connect(url, compression=None, max_size=None) as ws:
            await asyncio.sleep(0.1)  # registered
            flood = asyncio.create_task(http.post("/_sim/flood", params={"count": str(count)}))
            elapsed = await receive(ws, count)
            queued = (await flood).json()["queued"]
            # the model emits whole steps, so a flood may produce a few more than asked
            for _ in range(queued - count):
                await ws.recv(decode=False)
        return count / elapsed


def start_simulator(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_upstox.simulator",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--scenario",
            "flood",
            "--log-level",
            "WARNING",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_sim/counters", trust_env=False, timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("simulator did not start")


def model_rate(count: int) -> float:
    from airflow_provider_upstox.simulator.model import MarketModel

    model = MarketModel(seed=7)
    start, produced = time.perf_counter(), 0
    while produced < count:
        produced += len(model.step())
    return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=30_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each; the best is reported")
    args = parser.parse_args()

    baseline = [run_baseline(args.count) for _ in range(args.runs)]
    port = free_port()
    proc = start_simulator(port)
    try:
        simulated = [asyncio.run(run_simulator(port, args.count)) for _ in range(args.runs)]
    finally:
        proc.terminate()
        proc.wait()
    produced = model_rate(args.count)

    best_base, best_sim = max(baseline), max(simulated)
    print(
        f"messages per run: {args.count}, runs: {args.runs} (best shown; all: "
        f"baseline {[round(x) for x in baseline]}, simulator {[round(x) for x in simulated]})"
    )
    print(f"baseline  (bare websockets, pre-encoded frames): {best_base:10,.0f} msg/s")
    print(f"simulator (POST /_sim/flood, one client)       : {best_sim:10,.0f} msg/s")
    print(f"ratio simulator/baseline                       : {best_sim / best_base:10.2f}")
    print(f"model production rate (step + encode)          : {produced:10,.0f} msg/s")
    print(f"goal >= 20,000 msg/s to one client             : {'MET' if best_sim >= 20_000 else 'NOT MET'}")


if __name__ == "__main__":
    main()
