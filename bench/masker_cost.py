"""What Airflow's secrets masker costs a process that holds N Upstox tokens (``python bench/masker_cost.py``).

Not part of CI. Airflow masks a connection's password when it is looked up, so a triggerer running
N streams (one account, one token each) adds N values to its process-wide ``SecretsMasker``,
which recompiles one regex of all its values on each new one. This bench adds N tokens of a real
Upstox token's length and shape (the fleet simulator's :func:`account_token`, ~315 characters) the
way a lookup does (``mask_secret``), each in a fresh process, and prints for each N:

* CPU to add all N (what the lookups of N streams cost, on the event loop that makes them);
* the time of the last add (how long one new account's lookup blocks a loop already holding N-1);
* RSS per token with the hook's ``re.purge()`` after each new token, and without it (Python's
  ``re`` caches every superseded version of the masker's regex);
* a fit ``cpu = a * N**2`` from the largest N, and what it gives for 1,000 tokens;
* the redaction of one logged group event (48 order updates: what the triggerer's "Trigger fired
  event" line carries), its members as a JSON string (~42 KB, before) and compressed (now), with
  the N tokens of the real shape alone, with Airflow's own secrets beside them (as in a real
  triggerer), and with N random tokens of the same length: tokens alone share a 72-character
  prefix, which lets the masker's regex skip ahead; any other value takes that shortcut away, and
  the regex then tries every token wherever a value's first character occurs in the payload.
  ``--redact-only`` prints just this (seconds, not minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def child(n: int, purge: bool) -> dict[str, float]:
    from airflow.sdk.log import mask_secret

    from airflow_provider_upstox.simulator.__main__ import account_token

    tokens = [account_token("masker-bench", i) for i in range(1, n + 1)]
    mask_secret(account_token("masker-bench", 0))  # the masker's first compile is not per account
    base, cpu = _rss_kib(), time.process_time()
    last = 0.0
    for token in tokens:
        started = time.perf_counter()
        mask_secret(token)
        last = time.perf_counter() - started
        if purge:
            re.purge()
    return {
        "cpu_s": time.process_time() - cpu,
        "last_add_ms": last * 1000,
        "kib_per_token": (_rss_kib() - base) / n,
    }


#: What a triggerer's masker holds besides the tokens: Airflow masks its own sensitive settings
#: (the metadata database URL, the Fernet key, the API secret key and JWT secret) at start-up. None
#: of them starts like a token, so the regex loses the tokens' shared prefix as one shortcut.
AIRFLOW_SECRETS = (
    "postgresql+psycopg2://airflow:s3cr3t-pw@postgres/airflow",
    "Yq3f0m2YhKc6r0b7yPZs8m1lq8b9mK3wS7v2Xn4cTQ8=",
    "9f2c1e7a4b6d8e0f3a5c7e9b1d2f4a6c",
    "jwt-d41d8cd98f00b204e9800998ecf8427e",
)
MASKERS = ("real", "real + Airflow's", "random")


def redact_ms(n: int, masker_kind: str, compressed: bool) -> float:
    """Milliseconds to redact one logged group event with *n* tokens in a masker.

    :param masker_kind: ``real`` (tokens of the real shape only), ``real + Airflow's`` (plus
        :data:`AIRFLOW_SECRETS`, as in a triggerer) or ``random`` (random tokens of that length).
    :param compressed: the event as the trigger sends it (members compressed), else its members
        as one JSON string (before 2026-12-07).
    """
    from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker

    from airflow_provider_upstox.models.events import GROUP_STATUS, encode_group
    from airflow_provider_upstox.models.updates import encode_updates
    from airflow_provider_upstox.simulator.__main__ import account_token
    from bench.store_throughput import order_updates

    if masker_kind == "random":  # as long as the real ones, no shared prefix
        values = [os.urandom(236).hex()[: len(account_token("masker-bench", i))] for i in range(1, n + 1)]
    else:
        values = [account_token("masker-bench", i) for i in range(1, n + 1)]
        if masker_kind != "real":
            values += AIRFLOW_SECRETS
    updates = order_updates(48)
    members = [
        {"status": "batch", "conn_id": f"upstox_{i}", "updates": encode_updates([u]), "stats": {}}
        for i, u in enumerate(updates)
    ]
    event = encode_group(members) if compressed else {"status": GROUP_STATUS, "members": json.dumps(members)}
    masker = SecretsMasker()
    masker.patterns = {re.escape(t) for t in values}  # what n add_mask calls leave, without their cost
    masker.replacer = re.compile("|".join(masker.patterns))
    started = time.perf_counter()
    for _ in range(5):
        masker.redact(event)
    return (time.perf_counter() - started) / 5 * 1000


def print_redaction(counts: list[int]) -> None:
    print("redacting one logged group event of 48 updates, members as a JSON string (~42 KB) / compressed:")
    print(f"{'tokens':>6} " + " ".join(f"{k + ' masker':>32}" for k in MASKERS))
    for n in counts:
        cells = [f"{redact_ms(n, k, False):7.2f} / {redact_ms(n, k, True):5.2f} ms" for k in MASKERS]
        print(f"{n:>6} " + " ".join(f"{c:>32}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="100,200,300", help="token counts, comma separated")
    parser.add_argument("--redact-only", action="store_true", help="only the redaction table (seconds)")
    parser.add_argument("--child", nargs=2, metavar=("N", "PURGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "1")))
        return
    counts = sorted({*(int(x) for x in args.n.split(",")), 1000})
    if args.redact_only:
        print_redaction(counts)
        return

    def run(n: int, purge: bool) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--child", str(n), "1" if purge else "0"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    print(f"Airflow's SecretsMasker, real-shaped tokens (load average {os.getloadavg()[0]:.1f}, 2 cores)")
    print(f"{'N':>6} {'CPU to add N':>13} {'last add':>10} {'RSS/token, purged':>18} {'not purged':>11}")
    fitted = 0.0
    for n in (int(x) for x in args.n.split(",")):
        purged, kept = run(n, True), run(n, False)
        fitted = purged["cpu_s"] / n**2
        print(
            f"{n:>6} {purged['cpu_s']:>11.1f} s {purged['last_add_ms']:>7.0f} ms "
            f"{purged['kib_per_token']:>13.1f} KiB {kept['kib_per_token']:>7.1f} KiB"
        )
    print(f"fit cpu = {fitted:.2e} * N^2 -> 1,000 tokens: {fitted * 1e6:.0f} s of CPU to add (extrapolated)")
    print_redaction(counts)


if __name__ == "__main__":
    main()
