"""Soak: 200 watch-mode triggers at market rate for an hour (``python bench/stream_soak.py``).

Not part of CI. One process runs ``--streams`` (default 200) ``UpstoxPortfolioStreamTrigger`` in
watch mode, one per account, against a simulator process with as many accounts and a market of
``--rate`` updates/s per account (default 1), for ``--minutes`` (default 60). Every minute it
prints RSS, open file descriptors, updates yielded and error events. Verdict at the end: RSS growth
after the warm-up (``--warmup`` minutes, default 5; the first sample after it is the reference)
<= 5 %, and no descriptor leak (the count at the end within 2 % + 5 of the reference: sockets
come and go with REST calls, a leak grows without bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet_common import (
    Fleet,
    FleetSimulator,
    connection_env,
    log_like_a_triggerer,
    open_fds,
    rss_kib,
    warm_up,
)


async def soak(sim: FleetSimulator, args: argparse.Namespace) -> bool:
    log_like_a_triggerer(args.log_file)
    await warm_up("upstox_fleet_0")
    counts = {"updates": 0, "events": 0, "errors": 0}

    def on_event(_i: int, payload: dict[str, Any], _now: int) -> None:
        counts["events"] += 1
        if payload.get("status") == "error":
            counts["errors"] += 1
        else:
            counts["updates"] += len(payload["updates"])

    fleet = Fleet(args.streams, on_event)
    fleet.start()
    await asyncio.to_thread(sim.post, "market", rate=args.rate, running=True)
    samples: list[tuple[int, int, int]] = []
    start = time.monotonic()
    print(f"{'minute':>6} {'RSS MiB':>8} {'fds':>5} {'updates':>9} {'events':>8} {'errors':>6}", flush=True)
    for minute in range(1, args.minutes + 1):
        await asyncio.sleep(max(0.0, start + minute * 60 - time.monotonic()))
        rss, fds = rss_kib(), open_fds()
        samples.append((minute, rss, fds))
        print(
            f"{minute:6d} {rss / 1024:8.1f} {fds:5d} {counts['updates']:9d} {counts['events']:8d} "
            f"{counts['errors']:6d}",
            flush=True,
        )
    await asyncio.to_thread(sim.post, "market", running=False)
    await fleet.stop()
    after = [s for s in samples if s[0] > args.warmup] or samples[-1:]
    ref, end = after[0], samples[-1]
    growth = (end[1] - ref[1]) / ref[1] * 100
    fd_ok = end[2] <= ref[2] * 1.02 + 5
    rss_ok = growth <= 5.0
    print(
        f"RSS {ref[1] / 1024:.1f} MiB at minute {ref[0]} -> {end[1] / 1024:.1f} MiB at minute {end[0]}: "
        f"{growth:+.1f} % (goal <= 5 %) {'ok' if rss_ok else 'MISSED'}; descriptors {ref[2]} -> {end[2]} "
        f"{'no leak' if fd_ok else 'LEAK?'}; {counts['updates']} updates in {counts['events']} events, "
        f"{counts['errors']} error events"
    )
    return rss_ok and fd_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1.0, help="updates/s per account")
    parser.add_argument("--log-file", default=os.path.join(tempfile.gettempdir(), "stream_soak.log"))
    args = parser.parse_args()
    sim = FleetSimulator(args.streams)
    os.environ.update(connection_env(sim.base_url, sim.tokens()))
    print(
        json.dumps(
            {"streams": args.streams, "minutes": args.minutes, "rate": args.rate, "load": os.getloadavg()}
        )
    )
    try:
        ok = asyncio.run(soak(sim, args))
    finally:
        sim.close()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
