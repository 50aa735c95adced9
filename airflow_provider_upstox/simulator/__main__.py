"""Command line: run the simulator as a server process.

    python -m airflow_provider_upstox.simulator --host 127.0.0.1 --port 8765 --token T \\
        [--seed N] [--scenario NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from airflow_provider_upstox.simulator.faults import SCENARIOS
from airflow_provider_upstox.simulator.server import UpstoxSimulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m airflow_provider_upstox.simulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--token",
        default=os.environ.get("UPSTOX_SIMULATOR_TOKEN"),
        help="the access token to accept (default: $UPSTOX_SIMULATOR_TOKEN)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenario", default="default", choices=sorted(SCENARIOS))
    p.add_argument("--ping-interval", type=float, default=None, help="idle seconds before a server ping")
    p.add_argument("--user-id", default="AB1234")
    p.add_argument("--log-level", default="INFO")
    return p


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with UpstoxSimulator(
        token=args.token,
        seed=args.seed,
        scenario=args.scenario,
        host=args.host,
        port=args.port,
        ping_interval=args.ping_interval,
        user_id=args.user_id,
    ):
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if not args.token:
        raise SystemExit("--token (or UPSTOX_SIMULATOR_TOKEN) is required")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
