"""Trigger throughput and memory against the simulator's flood mode (``python bench/trigger_throughput.py``).

From one run on loopback, against one simulator process (scenario ``flood``):

* updates/s decoded and batched by ``UpstoxPortfolioStreamTrigger`` (watch mode, and deferral mode
  with the trigger re-created after every event, through the connection hand-off), as a ratio to a
  bare ``websockets`` ``recv`` + ``json.loads`` loop on the same feed (goal >= 0.8x);
* the same against the official SDK's ``PortfolioDataStreamer`` (goal >= 10x);
* what the hand-off saves: time to an instance's event with a fresh profile read + authorize +
  connect + snapshot, against a taken-over stream;
* RSS of one open idle stream (``PortfolioStreamClient``) against a bare ``websockets`` connection,
  each measured in its own subprocess (goal <= 2x).

Throughput is timed from the first stream message received to the last one consumed.
Options: ``--count N`` messages per run (default 60,000), ``--sdk-count N`` (default 20,000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import httpx

TYPES = "order,position,holding,gtt_order"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Simulator:
    """The simulator in its own process, so that it does not share our GIL."""

    def __init__(self) -> None:
        self.token = f"bench-{secrets.token_urlsafe(16)}"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_upstox.simulator", "--port", str(self.port),
             "--scenario", "flood", "--log-level", "WARNING"],
            env={**os.environ, "UPSTOX_SIMULATOR_TOKEN": self.token},
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.http = httpx.Client(base_url=self.base_url, timeout=60, trust_env=False)
        for _ in range(400):
            try:
                self.http.get("/_sim/counters")
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("simulator did not start")

    def flood(self, count: int) -> None:
        self.http.post("/_sim/flood", params={"count": json.dumps(count)}).raise_for_status()

    def authorize(self) -> str:
        r = self.http.get(
            "/v2/feed/portfolio-stream-feed/authorize",
            params={"update_types": TYPES},
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
        )
        r.raise_for_status()
        url: str = r.json()["data"]["authorized_redirect_uri"]
        return url

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(10)


# -- bare websockets loop ------------------------------------------------------------------------


async def bare_loop(sim: Simulator, count: int) -> float:
    from websockets.asyncio.client import connect

    async with connect(await asyncio.to_thread(sim.authorize), max_size=1 << 20) as ws:
        flood = asyncio.create_task(asyncio.to_thread(sim.flood, count))
        n, start = 0, 0.0
        async for message in ws:
            json.loads(message)
            n += 1
            if n == 1:
                start = time.perf_counter()
            if n == count:
                break
        elapsed = time.perf_counter() - start
        await flood
    return (count - 1) / elapsed


# -- the trigger ---------------------------------------------------------------------------------


def _stream_updates(payload: dict[str, Any]) -> list[list[Any]]:
    return [u for u in payload.get("updates", ()) if u[2] == "stream"]


async def trigger_watch(sim: Simulator, count: int) -> float:
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    trigger = UpstoxPortfolioStreamTrigger(mode="watch")
    agen = trigger.run()
    await anext(agen)  # connect + snapshot (the account has orders by now): the first event
    flood = asyncio.create_task(asyncio.to_thread(sim.flood, count))
    n, start_us = 0, None
    while n < count:
        event = await anext(agen)
        updates = _stream_updates(event.payload)
        if updates and start_us is None:
            start_us = updates[0][5]
        n += len(updates)
    end_us = time.time_ns() // 1000
    await agen.aclose()
    await trigger.cleanup()
    await flood
    assert start_us is not None
    return (n - 1) / ((end_us - start_us) / 1e6)


async def trigger_deferral(sim: Simulator, count: int) -> tuple[float, int]:
    """A new trigger instance per event, as a re-deferring operator causes; the hand-off keeps the socket."""
    from airflow_provider_upstox.triggers.handoff import registry
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    async def one_event() -> dict[str, Any]:
        trigger = UpstoxPortfolioStreamTrigger(mode="deferral")
        events = [e async for e in trigger.run()]
        await trigger.cleanup()
        payload: dict[str, Any] = events[0].payload
        return payload

    await one_event()  # connect + snapshot, then the stream lingers in the registry
    flood = asyncio.create_task(asyncio.to_thread(sim.flood, count))
    n, instances, start_us = 0, 0, None
    while n < count:
        payload = await one_event()
        instances += 1
        updates = _stream_updates(payload)
        if updates and start_us is None:
            start_us = updates[0][5]
        n += len(updates)
    end_us = time.time_ns() // 1000
    await flood
    await registry.aclose_all()
    assert start_us is not None
    return (n - 1) / ((end_us - start_us) / 1e6), instances


async def handoff_saving(rounds: int = 15) -> tuple[float, float]:
    """Median seconds to an instance's event: fresh connect + snapshot vs taken-over stream."""
    from airflow_provider_upstox.triggers.handoff import registry
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    async def timed(linger: float) -> float:
        UpstoxPortfolioStreamTrigger.handoff_linger = linger
        trigger = UpstoxPortfolioStreamTrigger(mode="deferral", max_batch_wait=0.0, idle_timeout=5.0)
        start = time.perf_counter()
        async for _ in trigger.run():
            pass
        elapsed = time.perf_counter() - start
        await trigger.cleanup()
        return elapsed

    fresh = [await timed(0.0) for _ in range(rounds)]  # every instance: profile, authorize, connect, snapshot
    await registry.aclose_all()
    await asyncio.sleep(0.2)
    UpstoxPortfolioStreamTrigger.handoff_linger = 30.0
    return statistics.median(fresh), 0.0


async def handoff_take_cost(sim: Simulator, rounds: int = 200) -> float:
    """Median seconds to an instance's event when it takes over a stream with buffered messages."""
    from airflow_provider_upstox.triggers.handoff import registry
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    trigger = UpstoxPortfolioStreamTrigger(mode="deferral", max_batch_size=1, max_batch_wait=0.0)
    async for _ in trigger.run():
        pass
    await asyncio.to_thread(sim.flood, rounds * 2)
    await asyncio.sleep(0.5)
    times = []
    for _ in range(rounds):
        trigger = UpstoxPortfolioStreamTrigger(mode="deferral", max_batch_size=1, max_batch_wait=0.0)
        start = time.perf_counter()
        async for _ in trigger.run():
            pass
        times.append(time.perf_counter() - start)
    await registry.aclose_all()
    return statistics.median(times)


# -- the official SDK ----------------------------------------------------------------------------


def sdk_streamer(sim: Simulator, count: int) -> float:
    import upstox_client
    from upstox_client.feeder.portfolio_data_feeder import PortfolioDataFeeder
    from upstox_client.feeder.portfolio_data_streamer import PortfolioDataStreamer

    url = f"ws://127.0.0.1:{sim.port}/v2/feed/portfolio-stream-feed?update_types=order%2Cposition%2Cholding%2Cgtt_order"
    PortfolioDataFeeder.get_websocket_url = lambda self: url  # type: ignore[method-assign]
    config = upstox_client.Configuration()
    config.access_token = sim.token
    streamer = PortfolioDataStreamer(
        upstox_client.ApiClient(config),
        order_update=True,
        position_update=True,
        holding_update=True,
        gtt_update=True,
    )
    opened, done = threading.Event(), threading.Event()
    state = {"n": 0, "start": 0.0, "end": 0.0}

    def on_message(message: Any) -> None:
        state["n"] += 1
        if state["n"] == 1:
            state["start"] = time.perf_counter()
        if state["n"] == count:
            state["end"] = time.perf_counter()
            done.set()

    streamer.on("open", lambda: opened.set())
    streamer.on("message", on_message)
    streamer.connect()
    if not opened.wait(10):
        raise RuntimeError("the SDK streamer did not connect")
    sim.flood(count)
    done.wait(120)
    streamer.disconnect()
    return (count - 1) / (state["end"] - state["start"])


# -- memory --------------------------------------------------------------------------------------

_RSS = "int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
_BARE = """
import asyncio, httpx, sys
from websockets.asyncio.client import connect
base, token = sys.argv[1], sys.argv[2]
async def main():
    async with httpx.AsyncClient(trust_env=False) as h:
        r = await h.get(base + "/v2/feed/portfolio-stream-feed/authorize", params={"update_types": "%s"},
                        headers={"Authorization": "Bearer " + token})
    async with connect(r.json()["data"]["authorized_redirect_uri"]) as ws:
        await asyncio.sleep(1.5)
        print(%s)
asyncio.run(main())
""" % (TYPES, _RSS)  # noqa: UP031
_OURS = """
import asyncio, sys
from airflow_provider_upstox.client import AsyncUpstoxClient, UpstoxClientConfig
from airflow_provider_upstox.stream import PortfolioStreamClient
base, token = sys.argv[1], sys.argv[2]
async def main():
    rest = AsyncUpstoxClient(UpstoxClientConfig(base_url=base, access_token=token))
    readers = {"order": rest.get_order_book, "position": rest.get_positions, "holding": rest.get_holdings,
               "gtt_order": rest.get_gtt_orders}
    async def snapshot(t): return await readers[t]()
    async def authorize(): return await rest.authorize_portfolio_stream("%s")
    async with PortfolioStreamClient(authorize, snapshot, "%s") as stream:
        await stream.next_batch(100000, 0.2, timeout=1.0)
        await asyncio.sleep(1.5)
        assert stream.connected
        print(%s)
    await rest.aclose()
asyncio.run(main())
""" % (TYPES, TYPES, _RSS)  # noqa: UP031


def rss_kib(code: str, sim: Simulator) -> int:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), sim.base_url, sim.token],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


# -- main ----------------------------------------------------------------------------------------


async def run_async(sim: Simulator, count: int) -> dict[str, Any]:
    from airflow_provider_upstox.stream import no_delays
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    UpstoxPortfolioStreamTrigger.stream_options = {"reconnect_delays": no_delays, "min_reconnect_delay": 0.05}
    results: dict[str, Any] = {}
    results["bare"] = await bare_loop(sim, count)
    results["watch"] = await trigger_watch(sim, count)
    results["deferral"], results["instances"] = await trigger_deferral(sim, count)
    results["fresh_s"], _ = await handoff_saving()
    results["takeover_s"] = await handoff_take_cost(sim)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60_000)
    parser.add_argument("--sdk-count", type=int, default=20_000)
    args = parser.parse_args()
    sim = Simulator()
    os.environ["AIRFLOW_CONN_UPSTOX_DEFAULT"] = json.dumps(
        {"conn_type": "upstox", "password": sim.token, "host": sim.base_url}
    )
    try:
        # Memory first, while the account is small: a snapshot's rows are data, not overhead.
        rss_bare, rss_ours = rss_kib(_BARE, sim), rss_kib(_OURS, sim)
        r = asyncio.run(run_async(sim, args.count))
        sdk = sdk_streamer(sim, args.sdk_count)
    finally:
        sim.close()
    bare = r["bare"]
    print(f"messages per run: {args.count:,} (SDK: {args.sdk_count:,})")
    print(f"bare websockets recv + json.loads : {bare:12,.0f} updates/s")
    print(f"official SDK PortfolioDataStreamer: {sdk:12,.0f} messages/s (undecoded strings)")
    for mode in ("watch", "deferral"):
        rate = r[mode]
        print(
            f"trigger, {mode:8} mode           : {rate:12,.0f} updates/s  = {rate / bare:5.2f}x bare "
            f"(goal >= 0.8)  = {rate / sdk:6.1f}x SDK (goal >= 10)"
        )
    print(f"  deferral mode used {r['instances']:,} trigger instances (one event each)")
    fresh, take = r["fresh_s"], r["takeover_s"]
    print(
        f"hand-off: instance -> event {take * 1000:.2f} ms taking over a stream vs {fresh * 1000:.1f} ms "
        f"with profile + authorize + connect + snapshot ({fresh / take:.0f}x); without it a 250-update "
        f"batch per {fresh * 1000:.0f} ms caps deferral mode at ~{250 / fresh:,.0f} updates/s "
        f"= {250 / fresh / bare:.2f}x bare"
    )
    print(
        f"RSS, one open idle stream: PortfolioStreamClient {rss_ours / 1024:.1f} MiB vs bare websockets "
        f"{rss_bare / 1024:.1f} MiB = {rss_ours / rss_bare:.2f}x (goal <= 2)"
    )


if __name__ == "__main__":
    main()
