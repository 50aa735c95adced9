"""SQLite store: CPU instructions per update of ``apply()``, its validation and the driver baseline.

    python bench/store_instructions.py              # needs valgrind; ~10 min on a loaded 2-core box
    python bench/store_instructions.py --batches 4 --parts apply,base

On a shared machine the wall-clock ratio of ``bench/store_throughput.py`` moves by +-0.05 from one
run to the next, too much to see a change of a few percent. Instructions do not depend on the
load: each part runs under ``valgrind --tool=cachegrind --cache-sim=no`` twice, with and without
its measured loop (everything else identical: imports, migrations, a warm-up batch, the rows), and
the difference divided by the updates is the part's cost:

- ``apply``: ``apply()`` of new orders in batches of 500 (the bench's "all new");
- ``validate``: ``Batch.validate()`` of the same batches (no database);
- ``base``: the sqlite3 driver's ``executemany`` of the identical rows into empty tables, as the
  bench's baseline (``DriverBaseline``) does.

The ratio base/apply is the instruction-count view of the bench's goal (>= 0.75x).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from store_throughput import (
    ACCOUNT,
    BATCH,
    TABLES,
    DriverBaseline,
    StoredRows,
    migrated,
    order_updates,
    read_back,
)

from airflow_provider_upstox.store.batch import Batch


def workload(part: str, batches: int, measured: bool) -> None:
    """One part's setup, then (if *measured*) its loop over *batches* batches of new orders."""
    tmp = Path(tempfile.mkdtemp())
    store = migrated(f"sqlite:///{tmp / 'store.db'}")
    updates = order_updates(BATCH * (batches + 1))
    store.apply(updates[:BATCH], account=ACCOUNT)  # warm-up: statement caches, lazy imports
    chunks = [updates[i : i + BATCH] for i in range(BATCH, len(updates), BATCH)]
    if part == "base":
        for chunk in chunks:  # the rows to write, untimed in both runs
            store.apply(chunk, account=ACCOUNT)
        stored = [read_back("sqlite", store.engine, t) for t in TABLES]
        baseline = DriverBaseline("sqlite", "executemany", migrated(f"sqlite:///{tmp / 'base.db'}").engine)
        parts = [
            [StoredRows(s.table, s.columns, s.rows[i : i + BATCH]) for s in stored]
            for i in range(0, len(stored[0].rows), BATCH)
        ]
        baseline.write(parts[0])  # warm-up (the first batch's rows)
        if measured:
            for rows in parts[1:]:
                baseline.write(rows)
    elif part == "validate":
        now = datetime.now(timezone.utc)
        if measured:
            for chunk in chunks:
                Batch(chunk, ACCOUNT, "default", now, 1).validate()
    elif measured:
        for chunk in chunks:
            store.apply(chunk, account=ACCOUNT)


def instructions(part: str, batches: int, measured: bool) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    cmd += [sys.executable, __file__, "--inner", part, str(batches), "1" if measured else "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"I\s+refs:\s+([\d,]+)", out).group(1).replace(",", ""))  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=4, help="measured batches of 500 (after a warm-up)")
    parser.add_argument("--parts", default="apply,validate,base")
    parser.add_argument("--inner", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        part, batches, measured = args.inner
        workload(part, int(batches), measured == "1")
        return 0
    n = args.batches * BATCH
    per_update = {}
    for part in args.parts.split(","):
        per_update[part] = (
            instructions(part, args.batches, True) - instructions(part, args.batches, False)
        ) / n
        print(f"{part:<9} {per_update[part]:>10,.0f} instructions per update", flush=True)
    if "apply" in per_update and "base" in per_update:
        print(f"base/apply: {per_update['base'] / per_update['apply']:.2f}x (the goal's view: >= 0.75x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
