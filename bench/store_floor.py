"""How close ``apply()`` can get to the driver on SQLite: its parts against the same baseline, one run.

    python bench/store_floor.py                  # SQLite, 10k new orders, 3 runs (~1 min)
    python bench/store_floor.py --runs 5 --updates 20000

Not part of CI. ``bench/store_throughput.py`` judges the issue-15 goal (``apply()`` >= 0.75x the
sqlite3 driver's ``executemany`` of the identical rows); this bench says what part of ``apply()``
stands in the way, by timing, batch by batch and interleaved with that same baseline:

* **apply**: ``PortfolioStore.apply()`` of a batch of 500 new orders (what the goal measures);
* **write only**: the same batch into another fresh store through the store's own writer and
  transaction policy (:func:`~airflow_provider_upstox.store.results.write_batch`), validated
  *before* timing: the store's SQL, upsert semantics, row building and commit, with no validation;
* **write + the two C calls**: write only, plus the two C-level calls that no validation can drop:
  the JSON encoding of each update's ``raw`` (the column's text) and the ``msgspec`` conversion of
  its data into the checked typed view;
* **validation**: ``Batch.validate()`` alone, per update;
* **baseline**: the sqlite3 driver's ``executemany`` of the rows ``apply()`` wrote, tuples built
  before timing (as in ``store_throughput.py``).

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
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_upstox.store import validation
from airflow_provider_upstox.store.batch import Batch
from airflow_provider_upstox.store.results import write_batch
from airflow_provider_upstox.store.transactions import TransactionPolicy
from bench.store_throughput import (
    ACCOUNT,
    BATCH,
    TABLES,
    DriverBaseline,
    check_identical,
    migrated,
    order_updates,
    read_back,
)

MEASURES = ("apply", "write only", "write + the two C calls")


def one_run(n: int, tmp: Path, index: int) -> dict[str, float]:
    """Seconds per measure over *n* new orders, and the baseline's, interleaved batch by batch."""
    store = migrated(f"sqlite:///{tmp / f'apply_{index}.db'}")
    bare = migrated(f"sqlite:///{tmp / f'write_{index}.db'}")
    target = migrated(f"sqlite:///{tmp / f'base_{index}.db'}")
    baseline = DriverBaseline("sqlite", "executemany", target.engine)
    policy, writer = TransactionPolicy(bare.engine), bare.writer
    seconds = dict.fromkeys((*MEASURES, "validation"), 0.0)
    try:
        updates, twins = order_updates(n), order_updates(n)
        for i in range(0, n, BATCH):
            chunk = updates[i : i + BATCH]
            start = time.perf_counter()
            store.apply(chunk, account=ACCOUNT)
            seconds["apply"] += time.perf_counter() - start

            twin = twins[i : i + BATCH]
            batch = Batch(twin, ACCOUNT, "default", datetime.now(timezone.utc), 1)
            start = time.perf_counter()
            batch.validate()
            seconds["validation"] += time.perf_counter() - start
            start = time.perf_counter()
            policy.run(partial(write_batch, writer, batch, ()))
            write = time.perf_counter() - start
            start = time.perf_counter()
            for update in twin:
                msgspec.json.encode(update.data)
                validation.fast_view(update)
            c_calls = time.perf_counter() - start
            seconds["write only"] += write
            seconds["write + the two C calls"] += write + c_calls

            ids = (chunk[0].data["order_id"], chunk[-1].data["order_id"])
            baseline.write([read_back("sqlite", store.engine, t, ids) for t in TABLES])
        check_identical("sqlite", store.engine, target.engine)
        seconds["baseline"] = baseline.seconds
    finally:
        baseline.close()
        for s in (store, bare, target):
            s.engine.dispose()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=10_000, help="new orders per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            seconds = one_run(args.updates, Path(tmp), i)
            runs.append(seconds)
            us = {k: v / args.updates * 1e6 for k, v in seconds.items()}
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f} us/update" for k, v in us.items()), flush=True)
    print(f"\nSQLite, {args.updates:,} new orders in batches of {BATCH}, {args.runs} runs")
    print("ratio = the driver's executemany of the identical rows / the measure (>= 0.75x is the goal)\n")
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
