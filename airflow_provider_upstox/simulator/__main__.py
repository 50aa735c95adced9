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
import hmac
import json
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


#: The first part of every Upstox access token: base64url of the JWT header
#: ``{"typ":"JWT","key_id":"sk_v1.0","alg":"HS256"}`` (see :func:`account_token`).
JWT_HEADER = "eyJ0eXAiOiJKV1QiLCJrZXlfaWQiOiJza192MS4wIiwiYWxnIjoiSFMyNTYifQ"


def account_token(token: str, index: int) -> str:
    """The token of extra account *index*: derived from *token*, of a real Upstox token's shape.

    Upstox calls its tokens opaque, and the provider never looks inside one. Those seen in public
    code are HS256 JWTs of about 310 characters whose first 72 are the same for every user (the
    header above, then ``{"sub":"`` encoded), followed by the user id, a token id, the issue and
    expiry times and the signature. The shape matters to what is measured with many accounts:
    Airflow's secrets masker compiles one regex of every token a process holds and runs it over
    every log line, the triggerer's log of each event payload included. The shared prefix does not
    make the compiling cheaper, but it lets the regex look for the prefix first: redacting a logged
    42 KB event with 300 tokens costs 0.1 ms with tokens of this shape, 40 ms with random ones
    (``python bench/masker_cost.py``).
    """
    seed = hashlib.sha256(f"{token}/{index}".encode()).digest()
    issued = 1_760_000_000 + int.from_bytes(seed[:3], "big")
    claims = {
        "sub": f"SIM{index:05d}",
        "jti": seed[3:15].hex(),
        "isMultiClient": False,
        "isPlusPlan": False,
        "iat": issued,
        "iss": "udapi-gateway-service",
        "exp": issued + 86_400,
    }
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(hmac.new(seed, f"{JWT_HEADER}.{body}".encode(), hashlib.sha256).digest())
    return f"{JWT_HEADER}.{body}.{signature}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


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
