"""Distributed, for real: Airflow with the CeleryExecutor, two workers, two triggerers, SIGKILLs.

Runs the AssetWatcher DAG ``upstox_portfolio_events`` for ``--accounts`` simulated Upstox accounts
(one simulator per account, network faults on) under ``api-server``, ``dag-processor``,
``scheduler``, two ``celery worker`` and two ``triggerer`` processes, with a fresh PostgreSQL metadata
database and store (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379) as the broker; then
SIGKILLs one triggerer mid-stream and one Celery worker in the middle of a persist task, stops the
market and compares the store with every account's ground truth. Prints the figures; exits 1 when
the store does not equal the truth, has a duplicate order state, or the killed task was not retried.
See ``tests/distributed/cluster.py`` for the timeline and the settings (those of
``docker/docker-compose.celery.yaml``).

    python scripts/distributed_run.py [--accounts 50] [--rate 0.5] [--seed 1] [--keep]

Needs the provider installed with its test extra (``bash scripts/bootstrap.sh``); a run with 50
accounts takes 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.distributed import cluster


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--rate", type=float, default=0.5, help="market updates/s per account")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the databases and AIRFLOW_HOME")
    args = parser.parse_args(argv)
    result = cluster.run(args.accounts, rate=args.rate, seed=args.seed, keep=args.keep)
    print(result.report())
    for problem in result.problems[:20]:
        print(f"  {problem}")
    retried = any(state == "failed" for _, _, state in result.tries[:-1]) and result.tries[-1][2] == "success"
    return 0 if not (result.problems or result.duplicates or result.secret_hits) and retried else 1


if __name__ == "__main__":
    sys.exit(main())
