"""Command line: run the simulator as a server process.

    python -m airflow_provider_upstox.simulator --host 127.0.0.1 --port 8765 --token T \\
        [--seed N] [--scenario NAME] [--accounts N] [--stamp-frames]

``--accounts N`` adds N-1 accounts to the primary one (N in all): token ``<token>-<i>`` and user id
``SIM<i:05d>`` for i = 1..N-1, each with its own market and rate limits (enforced).
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
    p.add_argument("--accounts", type=int, default=1, help="accounts in all (see above)")
    p.add_argument("--stamp-frames", action="store_true", help="add sim_sent_us to every stream frame")
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
        accounts=extra_accounts(args.token, args.accounts),
        stamp_frames=args.stamp_frames,
    ):
        await stop.wait()


def extra_accounts(token: str, count: int) -> dict[str, str]:
    """The accounts besides the primary one for ``--accounts count``: ``{token-i: SIMi}``."""
    return {f"{token}-{i}": f"SIM{i:05d}" for i in range(1, count)}


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
