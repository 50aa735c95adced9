"""Command line: run the simulator as a server process.

    python -m airflow_provider_upstox.simulator --host 127.0.0.1 --port 8765 --token T \\
        [--seed N] [--scenario NAME] [--accounts N] [--stamp-frames]

``--accounts N`` adds N-1 accounts to the primary one (N in all): token :func:`account_token` and
user id ``SIM<i:05d>`` for i = 1..N-1, each with its own market and rate limits (enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
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
    """The accounts besides the primary one for ``--accounts count``: ``{account_token(token, i): SIMi}``."""
    return {account_token(token, i): f"SIM{i:05d}" for i in range(1, count)}


def account_token(token: str, index: int) -> str:
    """The token of extra account *index*: derived from *token*, as long as a real Upstox token.

    Real tokens are JWTs of about 300 characters, each unlike the others from its first character.
    Tokens of that shape matter to what is measured with many accounts: Airflow's secrets masker
    compiles one regex of every token it holds, and a shared prefix would let the regex compiler
    factor it out and make that cost look small.
    """
    digest = b"".join(hashlib.sha512(f"{token}/{index}/{part}".encode()).digest() for part in range(4))
    return base64.urlsafe_b64encode(digest[:222]).decode()  # 296 characters


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
