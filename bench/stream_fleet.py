"""Per-stream cost of N watch-mode triggers in one process (``python bench/stream_fleet.py``).

For each N (``--n 100,300,1000``; ``--quick``: N=50 and short phases), against a simulator process
with N accounts (``--accounts N``, frames stamped with their send time, rate limits enforced), one
process runs N ``UpstoxPortfolioStreamTrigger`` in watch mode, one per account, driven as the
triggerer drives them (see ``bench/fleet_common.py``) and logging INFO through Airflow's secrets
masker to a file. Printed, each next to its goal:

* time until all N are connected and have yielded their snapshot (goal <= 60 s);
* RSS per stream above the process baseline (measured after imports and the one-time warm-up,
  before any trigger starts; goal <= 50 KiB), and as a ratio to a bare ``websockets`` connection
  measured in the same run in its own process against the same simulator (N connections);
* CPU while idle (market stopped; % of one core over ``--idle`` s; goal <= 2 %), and the bare
  connections' idle CPU for comparison;
* with a market of 1 update/s per account: CPU, and the latency from the simulator's send
  (``sim_sent_us`` in each frame) to the update yielded in an event, p50/p99 (goal p99 <= 2 s),
  plus updates yielded / produced;
* ``--herd``: every connection dropped at once (``/_sim/disconnect``): time until every stream
  is back (goal <= 60 s), reconnects per second at the peak, and the per-account REST rate counts
  the simulator kept (Upstox limits 50/s, 500/min, 2000/30 min: 0 requests over them).

The secrets masker's pattern count before and after is printed too: it must not grow with
connects (one token per account is masked once).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet_common import (
    TYPES,
    Fleet,
    FleetSimulator,
    connection_env,
    cpu_percent,
    log_like_a_triggerer,
    masker_patterns,
    percentile,
    rss_kib,
    warm_up,
)

GOAL_UP_S, GOAL_KIB, GOAL_IDLE_CPU, GOAL_P99_S, GOAL_HERD_S = 60.0, 50.0, 2.0, 2.0, 60.0


# -- the bare baseline (own process) ---------------------------------------------------------------


async def bare(base_url: str, tokens: list[str], idle: float) -> dict[str, Any]:
    import httpx
    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        await asyncio.sleep(0.2)
        gc.collect()
        base = rss_kib()
        sockets = []
        for token in tokens:
            r = await http.get(
                base_url + "/v2/feed/portfolio-stream-feed/authorize",
                params={"update_types": TYPES},
                headers={"Authorization": f"Bearer {token}"},
            )
            url = r.json()["data"]["authorized_redirect_uri"]
            sockets.append(await connect(url, max_size=1 << 20, max_queue=256, compression=None))
    await asyncio.sleep(2.0)
    rss = rss_kib()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(idle)
    idle_cpu = cpu_percent(time.process_time() - cpu, time.perf_counter() - wall)
    for ws in sockets:
        await ws.close()
    return {"kib_per_conn": (rss - base) / len(tokens), "idle_cpu": idle_cpu}


# -- the fleet (own process) -----------------------------------------------------------------------


class Observer:
    """Per stream: when its first event came, its connection epoch; latencies of stamped updates."""

    def __init__(self, n: int) -> None:
        self.first_us: list[int | None] = [None] * n
        self.epoch = [0] * n
        self.back_us: list[int | None] = [None] * n
        self.herd_from_epoch: list[int] | None = None
        self.latencies: list[float] | None = None
        self.stream_updates = 0
        self.errors = 0

    def on_event(self, i: int, payload: dict[str, Any], now_us: int) -> None:
        if payload.get("status") == "error":
            self.errors += 1
            return
        if self.first_us[i] is None:
            self.first_us[i] = now_us
        epoch = payload["stats"]["connection"]
        self.epoch[i] = epoch
        if self.herd_from_epoch is not None and self.back_us[i] is None and epoch > self.herd_from_epoch[i]:
            self.back_us[i] = now_us
        lat = self.latencies
        for u in payload["updates"]:
            if u[2] == "stream":
                self.stream_updates += 1
                sent = u[1].get("sim_sent_us")
                if lat is not None and sent is not None:
                    lat.append((now_us - sent) / 1e6)


async def wait_until(check: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def fleet(sim_url: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger  # noqa: F401

    log_like_a_triggerer(args.log_file)
    await warm_up("upstox_fleet_0")

    control = httpx.AsyncClient(base_url=sim_url, timeout=120, trust_env=False)

    async def sim(method: str, what: str, **params: Any) -> dict[str, Any]:
        r = await control.request(
            method, f"/_sim/{what}", params={k: json.dumps(v) for k, v in params.items()}
        )
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    await sim("GET", "counters")
    gc.collect()
    masks_before = masker_patterns()
    base = rss_kib()
    obs = Observer(n)
    fleet = Fleet(n, obs.on_event)
    out: dict[str, Any] = {"n": n, "baseline_mib": base / 1024}
    started = time.perf_counter()
    fleet.start()
    up = await wait_until(lambda: all(t is not None for t in obs.first_us), args.up_timeout)
    out["up_s"] = time.perf_counter() - started
    out["up_count"] = sum(1 for t in obs.first_us if t is not None)
    out["all_up"] = up
    await asyncio.sleep(args.settle)
    out["kib_per_stream"] = (rss_kib() - base) / n

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(args.idle)
    out["idle_cpu"] = cpu_percent(time.process_time() - cpu, time.perf_counter() - wall)

    before = sum(a["messages"] for a in (await sim("GET", "accounts"))["accounts"])
    received_before = obs.stream_updates
    await sim("POST", "market", rate=1.0, running=True)
    await asyncio.sleep(args.warm)
    obs.latencies = []
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(args.market)
    out["market_cpu"] = cpu_percent(time.process_time() - cpu, time.perf_counter() - wall)
    await sim("POST", "market", running=False, quiesce=True, timeout=30)
    await asyncio.sleep(2.5)  # the last batches' max_batch_wait
    lat, obs.latencies = obs.latencies, None
    produced = sum(a["messages"] for a in (await sim("GET", "accounts"))["accounts"]) - before
    out["market_updates"] = {"produced": produced, "yielded": obs.stream_updates - received_before}
    out["latency_p50"], out["latency_p99"] = percentile(lat, 0.5), percentile(lat, 0.99)
    out["latency_max"] = max(lat) if lat else float("nan")

    if args.herd:
        obs.herd_from_epoch = list(obs.epoch)
        t0 = time.time_ns() // 1000
        dropped = (await sim("POST", "disconnect", mode=1001))["dropped"]
        back = await wait_until(lambda: all(t is not None for t in obs.back_us), args.up_timeout)
        times = sorted((t - t0) / 1e6 for t in obs.back_us if t is not None)
        per_second = Counter(int(t) for t in times)
        out["herd"] = {
            "dropped": dropped,
            "all_back": back,
            "back": len(times),
            "back_s": times[-1] if times else float("nan"),
            "first_s": times[0] if times else float("nan"),
            "median_s": percentile(times, 0.5),
            "peak_per_s": max(per_second.values()) if per_second else 0,
        }
    accounts = (await sim("GET", "accounts"))["accounts"]
    out["rate"] = {
        "requests": sum(a["requests"] for a in accounts),
        "over_limit": sum(a["limited"] for a in accounts),
        "peak_per_second": max(a["peak_per_second"] for a in accounts),
        "peak_per_minute": max(a["peak_per_minute"] for a in accounts),
        "peak_per_30_minutes": max(a["peak_per_30_minutes"] for a in accounts),
    }
    out["errors"] = obs.errors
    out["masks"] = {"before": masks_before, "after": masker_patterns()}
    await fleet.stop()
    await control.aclose()
    return out


# -- orchestration ---------------------------------------------------------------------------------


def child(role: str, sim: FleetSimulator, n: int, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, **connection_env(sim.base_url, sim.tokens())}
    cmd = [sys.executable, __file__, "--role", role, "--sim", sim.base_url, "--n", str(n)]
    for flag in ("idle", "settle", "warm", "market", "up_timeout"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.herd:
        cmd.append("--herd")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{role} N={n} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def report(n: int, bare_: dict[str, Any], r: dict[str, Any], load: str) -> None:
    def ok(good: bool) -> str:
        return "ok" if good else "MISSED"

    print(f"\nN = {n} streams, one process ({load})", flush=True)
    print(
        f"  all connected + snapshot : {r['up_s']:6.1f} s  ({r['up_count']}/{n})      "
        f"goal <= {GOAL_UP_S:.0f} s "
        f"{ok(r['all_up'] and r['up_s'] <= GOAL_UP_S)}"
    )
    kib = r["kib_per_stream"]
    print(
        f"  RSS per stream           : {kib:6.1f} KiB above a {r['baseline_mib']:.0f} MiB baseline = "
        f"{kib / bare_['kib_per_conn']:.1f}x a bare websockets connection "
        f"({bare_['kib_per_conn']:.1f} KiB, same run)"
        f"   goal <= {GOAL_KIB:.0f} KiB {ok(kib <= GOAL_KIB)}"
    )
    print(
        f"  CPU idle                 : {r['idle_cpu']:6.2f} % of one core (bare connections: "
        f"{bare_['idle_cpu']:.2f} %)   goal <= {GOAL_IDLE_CPU:.0f} % {ok(r['idle_cpu'] <= GOAL_IDLE_CPU)}"
    )
    mu = r["market_updates"]
    print(
        f"  market 1 update/s/account: CPU {r['market_cpu']:.1f} % of one core; send -> event p50 "
        f"{r['latency_p50']:.2f} s, p99 {r['latency_p99']:.2f} s (max {r['latency_max']:.2f})   goal p99 <= "
        f"{GOAL_P99_S:.0f} s {ok(r['latency_p99'] <= GOAL_P99_S)}; yielded {mu['yielded']}/{mu['produced']} "
        f"produced {ok(mu['yielded'] >= mu['produced'])}"
    )
    if "herd" in r:
        h = r["herd"]
        print(
            f"  herd: {h['dropped']} dropped at once -> all back {h['back_s']:.1f} s ({h['back']}/{n}; first "
            f"{h['first_s']:.1f} s, median {h['median_s']:.1f} s, peak {h['peak_per_s']} streams back in one "
            f"second)   goal <= {GOAL_HERD_S:.0f} s {ok(h['all_back'] and h['back_s'] <= GOAL_HERD_S)}"
        )
    rt = r["rate"]
    print(
        f"  REST per account (whole run): peak {rt['peak_per_second']}/s, {rt['peak_per_minute']}/min, "
        f"{rt['peak_per_30_minutes']}/30 min (limits 50, 500, 2000); requests over a limit: "
        f"{rt['over_limit']} of {rt['requests']} {ok(rt['over_limit'] == 0)}"
    )
    print(
        f"  secrets masker patterns  : {r['masks']['before']} before, {r['masks']['after']} after "
        f"(N tokens masked once each; no per-connect mask); error events: {r['errors']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,300,1000")
    parser.add_argument("--quick", action="store_true", help="N=50, short phases")
    parser.add_argument("--herd", action="store_true", help="also drop every connection at once")
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--warm", type=float, default=5.0)
    parser.add_argument("--market", type=float, default=20.0)
    parser.add_argument("--up-timeout", type=float, default=180.0)
    parser.add_argument("--role", choices=("bare", "fleet"), help=argparse.SUPPRESS)
    parser.add_argument("--sim", help=argparse.SUPPRESS)
    parser.add_argument("--log-file", default=os.path.join(tempfile.gettempdir(), "stream_fleet.log"))
    args = parser.parse_args()
    if args.role:
        n = int(args.n)
        if args.role == "bare":
            tokens = [json.loads(os.environ[f"AIRFLOW_CONN_UPSTOX_FLEET_{i}"])["password"] for i in range(n)]
            result = asyncio.run(bare(args.sim, tokens, min(args.idle, 10.0)))
        else:
            result = asyncio.run(fleet(args.sim, n, args))
        print(json.dumps(result))
        return
    if args.quick:
        args.n, args.idle, args.settle, args.warm, args.market = "50", 5.0, 2.0, 2.0, 5.0
    for n in (int(x) for x in args.n.split(",")):
        sim = FleetSimulator(n)
        try:
            bare_ = child("bare", sim, n, args)
            sim.post("reset")
            load_before = os.getloadavg()
            result = child("fleet", sim, n, args)
            load = f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, 2 cores"
        finally:
            sim.close()
        report(n, bare_, result, load)


if __name__ == "__main__":
    main()
