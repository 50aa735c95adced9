"""How close ``apply()`` can get to the driver: its parts against the same baseline, in one run.

    python bench/store_floor.py                  # SQLite, 10k new orders, 3 runs (~1 min)
    python bench/store_floor.py --runs 5 --updates 20000
    python bench/store_floor.py --backend postgresql --updates 30000

Not part of CI. ``bench/store_throughput.py`` judges the issue-15 goals (``apply()`` >= 0.75x the
sqlite3 driver's ``executemany`` of the identical rows; on PostgreSQL >= 0.75x psycopg's ``COPY``
of them); this bench says what part of ``apply()`` stands in the way, by timing, batch by batch
and interleaved with that same baseline:

* **apply**: ``PortfolioStore.apply()`` of a batch of 500 new orders (what the goal measures);
* **write only**: the same batch into another fresh store through the store's own writer and
  transaction policy (:func:`~airflow_provider_upstox.store.results.write_batch`), validated
  *before* timing: the store's SQL, upsert semantics, row building and commit, with no validation;
* **write + the two C calls**: write only, plus the two C-level calls that no validation can drop,
  made by the store's own functions: the JSON encoding of each update's ``raw`` (the column's
  text, :func:`~airflow_provider_upstox.store.validation.check_text`) and the ``msgspec``
  conversion of its data into the checked typed view (``validation.fast_view``);
* **validation**: ``Batch.validate()`` alone, per update;
* **baseline**: the driver writing the rows ``apply()`` wrote, tuples built before timing (as in
  ``store_throughput.py``): sqlite3's ``executemany``, or psycopg's ``COPY`` on PostgreSQL.

Each figure is printed as a ratio to the baseline of the same run (worst and median over the
runs). If "write only" is near 0.75x, no Python validation, however fast, lets ``apply()`` reach
0.75x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_upstox.store import DEFAULT_STREAM_KEY, PortfolioStore, validation
from airflow_provider_upstox.store.batch import Batch
from airflow_provider_upstox.store.results import write_batch
from airflow_provider_upstox.store.transactions import TransactionPolicy
from bench.store_throughput import (
    ACCOUNT,
    BATCH,
    TABLES,
    DriverBaseline,
    check_identical,
    fresh_database,
    migrated,
    order_updates,
    read_back,
)

MEASURES = ("apply", "write only", "write + the two C calls")


BASELINES = {"sqlite": "executemany", "postgresql": "COPY"}


def one_run(backend: str, pg_url: str, n: int, tmp: Path) -> dict[str, float]:
    """Seconds per measure over *n* new orders, and the baseline's, interleaved batch by batch."""
    with ExitStack() as stack:
        store, bare, target = (
            migrated(stack.enter_context(fresh_database(backend, pg_url, tmp))) for _ in range(3)
        )
        for opened in (store, bare, target):
            stack.callback(opened.engine.dispose)
        baseline = DriverBaseline(backend, BASELINES[backend], target.engine)
        stack.callback(baseline.close)
        return _timed(backend, n, store, bare, target, baseline)


def _timed(
    backend: str,
    n: int,
    store: PortfolioStore,
    bare: PortfolioStore,
    target: PortfolioStore,
    baseline: DriverBaseline,
) -> dict[str, float]:
    policy, writer = TransactionPolicy(bare.engine), bare.writer
    seconds = dict.fromkeys((*MEASURES, "validation"), 0.0)
    updates, twins = order_updates(n), order_updates(n)
    for i in range(0, n, BATCH):
        chunk = updates[i : i + BATCH]
        start = time.perf_counter()
        store.apply(chunk, account=ACCOUNT)
        seconds["apply"] += time.perf_counter() - start

        twin = twins[i : i + BATCH]
        batch = Batch(twin, ACCOUNT, DEFAULT_STREAM_KEY, datetime.now(timezone.utc), 1)
        start = time.perf_counter()
        batch.validate()
        seconds["validation"] += time.perf_counter() - start
        start = time.perf_counter()
        policy.run(partial(write_batch, writer, batch, ()))
        write = time.perf_counter() - start
        start = time.perf_counter()
        for update in twin:
            validation.check_text(update)
            validation.fast_view(update)
        c_calls = time.perf_counter() - start
        seconds["write only"] += write
        seconds["write + the two C calls"] += write + c_calls

        ids = (chunk[0].data["order_id"], chunk[-1].data["order_id"])
        baseline.write([read_back(backend, store.engine, t, ids) for t in TABLES])
    check_identical(backend, store.engine, target.engine)
    seconds["baseline"] = baseline.seconds
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=10_000, help="new orders per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=sorted(BASELINES), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="admin URL; fresh databases are created and dropped")  # fmt: skip
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            seconds = one_run(args.backend, args.pg_url, args.updates, Path(tmp))
            runs.append(seconds)
            us = {k: v / args.updates * 1e6 for k, v in seconds.items()}
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f} us/update" for k, v in us.items()), flush=True)
    method = BASELINES[args.backend]
    print(f"\n{args.backend}, {args.updates:,} new orders in batches of {BATCH}, {args.runs} runs")
    print(f"ratio = the driver's {method} of the identical rows / the measure (>= 0.75x is the goal)\n")
    for measure in MEASURES:
        ratios = [r["baseline"] / r[measure] for r in runs]
        print(
            f"  {measure:<26} worst {min(ratios):.2f}x  median {statistics.median(ratios):.2f}x  "
            f"(runs: {', '.join(f'{x:.2f}' for x in ratios)})"
        )
    per_update = [r["validation"] / args.updates * 1e6 for r in runs]
    print(f"  validation alone           median {statistics.median(per_update):.1f} us/update")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
