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

Robust on a shared, loaded machine: runs are interleaved (bare, watch, bare, deferral, SDK, repeated
``--reps`` times, then bare) and each ratio is the median of per-repetition ratios against the mean
of the two bare runs around it;
the simulator is reset (same seed) before every run, so each run reads exactly the same feed from a
fresh account. ``--pin`` pins the simulator process and this one to different CPUs: it isolates
them on an otherwise idle machine, but on a loaded one it only stops the scheduler from moving this
process off a busy CPU, so it is off by default. Every contender counts the same thing: stream
updates decoded (and for the trigger, batched into events) from the first one received until the
N-th (``--count``); the flood carries a few batches more than N, so the N-th never waits in a
half-full batch. Besides wall-clock rates, the reading thread's CPU time per update is printed (for
the SDK, the process's): preemption by other processes does not inflate it, though cache and core
sharing still add noise.
Options: ``--count N`` (default 20,000), ``--sdk-count N`` (default 5,000), ``--reps R`` (default 5).
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
from collections.abc import Callable
from typing import Any

import httpx

TYPES = "order,position,holding,gtt_order"
#: The bare loop connects exactly as PortfolioStreamClient does (its defaults), so both read the
#: same frames through the same websockets settings; the simulator declines compression anyway.
WS_OPTIONS: dict[str, Any] = {"max_size": 1 << 20, "max_queue": 256, "compression": None}
#: Messages flooded beyond N: the batch holding the N-th update fills at once instead of waiting.
EXTRA = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pin(cpu: int) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


class Simulator:
    """The simulator in its own process (pinned to another CPU), so that it does not share our GIL."""

    def __init__(self, cpu: int | None) -> None:
        self.token = f"bench-{secrets.token_urlsafe(16)}"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_upstox.simulator", "--port", str(self.port),
             "--scenario", "flood", "--log-level", "WARNING"],
            env={**os.environ, "UPSTOX_SIMULATOR_TOKEN": self.token},
            stdout=subprocess.DEVNULL,
            preexec_fn=None if cpu is None else _pin(cpu),
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

    def reset(self) -> None:
        """Same seed, fresh account, no connection left: every run reads the same feed."""
        self.http.post("/_sim/reset", params={"seed": "0", "scenario": '"flood"'}).raise_for_status()
        for _ in range(200):
            if self.http.get("/_sim/counters").json()["connected"] == 0:
                return
            time.sleep(0.02)
        raise RuntimeError("a stream connection is still open after reset")

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


class Run:
    """Rate (updates/s, wall clock, first update to N-th) and CPU time of the reading thread per
    update (from the flood request to the N-th update: idle waits are not counted)."""

    def __init__(self, count: int, seconds: float, cpu_seconds: float) -> None:
        self.rate = (count - 1) / seconds
        self.cpu_us = cpu_seconds / count * 1e6


# -- bare websockets loop ------------------------------------------------------------------------


async def bare_loop(sim: Simulator, count: int) -> Run:
    from websockets.asyncio.client import connect

    async with connect(await asyncio.to_thread(sim.authorize), **WS_OPTIONS) as ws:
        cpu = time.thread_time()
        flood = asyncio.create_task(asyncio.to_thread(sim.flood, count + EXTRA))
        n, start = 0, 0.0
        async for message in ws:
            json.loads(message)
            n += 1
            if n == 1:
                start = time.perf_counter()
            if n == count:
                break
        elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
        await flood
    return Run(count, elapsed, cpu)


# -- the trigger ---------------------------------------------------------------------------------


def _stream_updates(payload: dict[str, Any]) -> int:
    return sum(1 for u in payload.get("updates", ()) if u[2] == "stream")


async def trigger_watch(sim: Simulator, count: int) -> Run:
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    trigger = UpstoxPortfolioStreamTrigger(mode="watch")
    agen = trigger.run()
    await anext(agen)  # connect + snapshot of the fresh account: the first event, before the flood
    cpu = time.thread_time()
    flood = asyncio.create_task(asyncio.to_thread(sim.flood, count + EXTRA))
    n, start_us = 0, None
    while n < count:
        event = await anext(agen)
        if start_us is None:
            start_us = event.payload["updates"][0][5]
        n += _stream_updates(event.payload)
    end_us, cpu = time.time_ns() // 1000, time.thread_time() - cpu
    await agen.aclose()
    await trigger.cleanup()
    await flood
    assert start_us is not None
    return Run(count, (end_us - start_us) / 1e6, cpu)


async def trigger_deferral(sim: Simulator, count: int) -> tuple[Run, int]:
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
    cpu = time.thread_time()
    flood = asyncio.create_task(asyncio.to_thread(sim.flood, count + EXTRA))
    n, instances, start_us = 0, 0, None
    while n < count:
        payload = await one_event()
        instances += 1
        if start_us is None:
            start_us = payload["updates"][0][5]
        n += _stream_updates(payload)
    end_us, cpu = time.time_ns() // 1000, time.thread_time() - cpu
    await flood
    await registry.aclose_all()
    assert start_us is not None
    return Run(count, (end_us - start_us) / 1e6, cpu), instances


async def handoff_fresh(rounds: int = 5) -> float:
    """Median seconds to an instance's event with no stream to take over.

    Each instance reads the profile, authorizes, connects and takes the snapshot.
    """
    from airflow_provider_upstox.triggers.handoff import registry
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    UpstoxPortfolioStreamTrigger.handoff_linger = 0.0
    times = []
    try:
        for _ in range(rounds):
            trigger = UpstoxPortfolioStreamTrigger(mode="deferral", max_batch_wait=0.0, idle_timeout=5.0)
            start = time.perf_counter()
            async for _ in trigger.run():
                pass
            times.append(time.perf_counter() - start)
            await trigger.cleanup()
    finally:
        UpstoxPortfolioStreamTrigger.handoff_linger = 30.0
    await registry.aclose_all()
    return statistics.median(times)


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


def sdk_streamer(sim: Simulator, count: int) -> Run:
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
    state = {"n": 0, "start": 0.0, "end": 0.0, "cpu": 0.0}

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
    cpu = time.process_time()  # the SDK reads in its own thread(s): the whole process
    sim.flood(count + EXTRA)
    if not done.wait(120):
        raise RuntimeError("the SDK streamer did not receive the flood")
    cpu = time.process_time() - cpu
    streamer.disconnect()
    return Run(count, state["end"] - state["start"], cpu)


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


def measure(sim: Simulator, count: int, sdk_count: int, reps: int) -> dict[str, list[Any]]:
    """``reps`` x (bare, watch, bare, deferral, SDK) and a last bare run, the simulator reset before each.

    Every trigger run sits between two bare runs: its ratio is to their mean (A/B/A/B).
    """
    from airflow_provider_upstox.stream import no_delays
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    UpstoxPortfolioStreamTrigger.stream_options = {"reconnect_delays": no_delays, "min_reconnect_delay": 0.05}
    runs: dict[str, list[Any]] = {k: [] for k in ("bare", "watch", "deferral", "instances", "sdk")}

    def run(name: str) -> None:
        sim.reset()
        if name == "bare":
            runs[name].append(asyncio.run(bare_loop(sim, count)))
        elif name == "watch":
            runs[name].append(asyncio.run(trigger_watch(sim, count)))
        elif name == "deferral":
            result, instances = asyncio.run(trigger_deferral(sim, count))
            runs[name].append(result)
            runs["instances"].append(instances)
        else:
            runs[name].append(sdk_streamer(sim, sdk_count))

    for rep in range(reps):
        for name in ("bare", "watch", "bare", "deferral", "sdk"):
            run(name)
        print(
            f"  rep {rep + 1}/{reps}: bare {runs['bare'][-2].rate:,.0f} / {runs['bare'][-1].rate:,.0f}, "
            f"watch {runs['watch'][-1].rate:,.0f}, deferral {runs['deferral'][-1].rate:,.0f}, "
            f"SDK {runs['sdk'][-1].rate:,.0f} updates/s",
            flush=True,
        )
    run("bare")
    sim.reset()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--sdk-count", type=int, default=5_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pin", action="store_true", help="pin the simulator and this process to two CPUs")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    if pin:
        os.sched_setaffinity(0, {cpus[0]})
    sim = Simulator(cpus[1] if pin else None)
    os.environ["AIRFLOW_CONN_UPSTOX_DEFAULT"] = json.dumps(
        {"conn_type": "upstox", "password": sim.token, "host": sim.base_url}
    )
    try:
        rss_bare, rss_ours = rss_kib(_BARE, sim), rss_kib(_OURS, sim)
        runs = measure(sim, args.count, args.sdk_count, args.reps)
        fresh = asyncio.run(handoff_fresh())
        sim.reset()
        take = asyncio.run(handoff_take_cost(sim))
    finally:
        sim.close()
    med = statistics.median
    bare_runs, sdk_runs = runs["bare"], runs["sdk"]

    def ratios(mode: str, offset: int) -> tuple[float, float, float]:
        """Median ratios of *mode*'s runs to the mean of their two neighbouring bare runs: rate, CPU
        per update (bare / trigger: above 1 means cheaper than bare), and rate to the same rep's SDK."""
        rate, cpu, sdk = [], [], []
        for i, r in enumerate(runs[mode]):
            a, b = bare_runs[2 * i + offset], bare_runs[2 * i + offset + 1]
            rate.append(r.rate / ((a.rate + b.rate) / 2))
            cpu.append((a.cpu_us + b.cpu_us) / 2 / r.cpu_us)
            sdk.append(r.rate / sdk_runs[i].rate)
        return med(rate), med(cpu), med(sdk)

    bare, sdk = med(r.rate for r in bare_runs), med(r.rate for r in sdk_runs)
    print(
        f"messages per run: {args.count:,} (SDK: {args.sdk_count:,}), {args.reps} repetitions, "
        f"{'pinned to CPUs ' + str(cpus[:2]) if pin else 'not pinned'}, load {os.getloadavg()[0]:.1f}"
    )
    bare_cpu = med(r.cpu_us for r in bare_runs)
    print(f"bare websockets recv + json.loads : {bare:10,.0f} updates/s  {bare_cpu:5.1f} us CPU/update")
    sdk_cpu = med(r.cpu_us for r in sdk_runs)
    print(
        f"official SDK PortfolioDataStreamer: {sdk:10,.0f} messages/s  {sdk_cpu:5.1f} us CPU/message "
        f"(whole process; undecoded strings); the bare loop is {bare / sdk:.1f}x it on this machine"
    )
    for mode, offset in (("watch", 0), ("deferral", 1)):
        rate, cpu = med(r.rate for r in runs[mode]), med(r.cpu_us for r in runs[mode])
        to_bare, cpu_ratio, to_sdk = ratios(mode, offset)
        print(
            f"trigger, {mode:8} mode           : {rate:10,.0f} updates/s  {cpu:5.1f} us CPU/update  "
            f"= {to_bare:4.2f}x bare (goal >= 0.8; CPU {cpu_ratio:4.2f}x) = {to_sdk:5.1f}x SDK (goal >= 10)"
        )
    instances = med(runs["instances"])
    print(f"  (medians of per-repetition ratios; deferral mode used {instances:,.0f} instances per run)")
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
