"""Portfolio store throughput: ``apply()`` against the driver writing the identical rows, in one run.

    python bench/store_throughput.py                 # PostgreSQL + SQLite, 10k orders (~1 min)
    python bench/store_throughput.py --repeat 3      # the verdict: worst (and median) of 3 runs
    python bench/store_throughput.py --full          # also scale to 100k and 1M stored orders (slow)
    python bench/store_throughput.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Each run, per backend, on a fresh database, with realistic order messages in batches of 500:

1. ``apply()``, all new: N new orders (validation, version, de-duplication, upsert of
   ``upstox_orders``, insert-ignore of ``upstox_order_events``, the progress row, one transaction
   per batch). This is the goal's measure.
2. The baselines, on the IDENTICAL rows: every state row and event row that step 1 wrote (same
   columns, same values, the same ``raw`` JSON text) is read back and written again by the driver
   into EMPTY tables with the same DDL (another database migrated by the store, one per method),
   the driver's tuples built before timing, the same batches of 500 updates (500 order rows + 500
   event rows, one transaction each): the driver's ``executemany`` (sqlite3, psycopg 3) and, on
   PostgreSQL, the driver's ``COPY`` (psycopg 3 ``Copy.write_row``, text format). Rates count
   updates, i.e. one per row pair. Steps 1 and 2 are interleaved batch by batch (apply a batch,
   read its rows back untimed, write them by each driver method), so both sides of a ratio are
   timed over the same seconds of a machine whose speed changes from one minute to the next; the
   baselines' tables are then checked to hold exactly the store's rows.
3. ``apply()``, replay (the same updates again: all ignored) and newer (a newer state of every
   order: all updated), reported against the same baselines.

Goals (issue 15), on "all new" (the baseline writes N new orders, exactly what "all new" does), worst
of the runs: SQLite ``apply()`` >= 0.75x the driver's ``executemany`` of the identical rows;
PostgreSQL ``apply()`` >= 0.75x the driver's ``COPY`` of the identical rows and >= 1.0x its
``executemany``. Replay and newer are reported with the same ratios, not judged. Ratios are taken
within a run (this machine's speed changes from one minute to the next), then the worst and median
over runs are printed. Only the store's public API is used for the store's side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import PortfolioStore

BATCH = 500
ACCOUNT = "AB1234"
BASE_US = 1_708_500_000_000_000
TABLES = ("upstox_orders", "upstox_order_events")
KEYS = {"upstox_orders": "account, order_id", "upstox_order_events": "account, order_id, state_id"}


def order_updates(
    n: int, *, start: int = 0, status: str = "open", filled: int = 0, seq0: int = 0
) -> list[Update]:
    out = []
    for i in range(start, start + n):
        data = {
            "update_type": "order", "user_id": ACCOUNT, "exchange": "NSE",
            "instrument_token": f"NSE_EQ|INE{i % 5000:09d}", "instrument_key": f"NSE_EQ|INE{i % 5000:09d}",
            "trading_symbol": "NHPC-EQ", "product": "D", "order_type": "LIMIT", "average_price": 92.925,
            "price": 92.95, "trigger_price": 0, "quantity": 10, "disclosed_quantity": 0,
            "pending_quantity": 10 - filled, "transaction_type": "BUY", "order_ref_id": "57744821658411",
            "exchange_order_id": "1300000012345678", "parent_order_id": None, "validity": "DAY",
            "status": status, "is_amo": False, "variety": "SIMPLE", "tag": None,
            "exchange_timestamp": "2024-02-21 14:40:03", "status_message": "", "order_id": f"2402210{i:08d}",
            "order_request_id": "1", "order_timestamp": "2024-02-21 14:40:02", "filled_quantity": filled,
            "guid": None, "placed_by": ACCOUNT, "status_message_raw": None,
        }  # fmt: skip
        out.append(
            Update(update_type="order", data=data, seq=seq0 + i + 1, received_at_us=BASE_US + seq0 + i)
        )
    return out


# ------------------------------------------------------------------------------------------ databases
@contextmanager
def fresh_database(backend: str, pg_admin_url: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'bench_{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"upx_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def migrated(url: str) -> PortfolioStore:
    store = PortfolioStore.from_url(url)
    store.migrate()
    return store


def rate(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def apply_all(store: PortfolioStore, updates: list[Update]) -> None:
    for i in range(0, len(updates), BATCH):
        store.apply(updates[i : i + BATCH], account=ACCOUNT)


# ---------------------------------------------------------------------------------- identical rows
@dataclass
class StoredRows:
    """What ``apply()`` wrote to one table, as the driver returns it (``raw`` as JSON text)."""

    table: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def read_back(backend: str, engine: sa.Engine, table: str, ids: tuple[str, str] | None = None) -> StoredRows:
    """The rows of *table* (of the orders *ids* from-to) in key order; PostgreSQL ``jsonb`` read as its
    text (the same JSON)."""
    with engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cur.execute(f"SELECT * FROM {table} LIMIT 0")
        columns = [d[0] for d in cur.description]
        types = {}
        if backend == "postgresql":
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                (table,),
            )
            types = dict(cur.fetchall())
        select = ", ".join(f"{c}::text" if types.get(c) == "jsonb" else f'"{c}"' for c in columns)
        where = f"WHERE order_id BETWEEN '{ids[0]}' AND '{ids[1]}'" if ids else ""
        cur.execute(f"SELECT {select} FROM {table} {where} ORDER BY {KEYS[table]}")
        rows = [tuple(r) for r in cur.fetchall()]
        cur.close()
    return StoredRows(table, columns, rows)


class DriverBaseline:
    """The driver writing the identical rows, batch by batch, into the empty tables of *engine*.

    :param method: ``executemany`` (sqlite3, psycopg 3) or ``COPY`` (psycopg 3, text format).
    """

    def __init__(self, backend: str, method: str, engine: sa.Engine) -> None:
        self.backend, self.method, self.engine = backend, method, engine
        self.raw = engine.raw_connection()
        self.driver: Any = self.raw.driver_connection
        self.seconds = 0.0
        self.updates = 0

    def write(self, stored: list[StoredRows]) -> None:
        """One batch (its order rows and event rows, one transaction), timed; tuples already built."""
        mark = "?" if self.backend == "sqlite" else "%s"
        statements = []
        for s in stored:
            cols = ", ".join(f'"{c}"' for c in s.columns)
            if self.method == "COPY":
                statements.append(f"COPY {s.table} ({cols}) FROM STDIN")
            else:
                statements.append(
                    f"INSERT INTO {s.table} ({cols}) VALUES ({', '.join([mark] * len(s.columns))})"
                )
        start = time.perf_counter()
        cur = self.driver.cursor()
        if self.backend == "sqlite":
            cur.execute("BEGIN")
        for sql, s in zip(statements, stored, strict=True):
            if self.method == "COPY":
                with cur.copy(sql) as copy:
                    for row in s.rows:
                        copy.write_row(row)
            else:
                cur.executemany(sql, s.rows)
        self.driver.commit()
        cur.close()
        self.seconds += time.perf_counter() - start
        self.updates += len(stored[0].rows)

    def close(self) -> None:
        self.raw.close()


def check_identical(backend: str, source: sa.Engine, target: sa.Engine) -> None:
    """The baseline wrote exactly the rows ``apply()`` wrote (else the comparison would be unfair)."""
    for table in TABLES:
        if read_back(backend, source, table).rows != read_back(backend, target, table).rows:
            raise AssertionError(f"the driver baseline did not store the identical rows of {table}")


# --------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    backend: str
    rates: dict[str, float] = field(default_factory=dict)  # measure -> updates/s


APPLY_MEASURES = ("apply, all new", "apply, replay (all ignored)", "apply, newer (all updated)")


def run_backend(backend: str, pg_url: str, n: int, scales: list[int], tmp: Path) -> Run:
    """One run on fresh databases: the store's, and one per driver baseline."""
    run = Run(backend)
    methods = ["executemany", "COPY"] if backend == "postgresql" else ["executemany"]
    with ExitStack() as stack:
        store = migrated(stack.enter_context(fresh_database(backend, pg_url, tmp)))
        stack.callback(store.engine.dispose)
        baselines = []
        for method in methods:
            target = migrated(stack.enter_context(fresh_database(backend, pg_url, tmp)))
            stack.callback(target.engine.dispose)
            baselines.append(DriverBaseline(backend, method, target.engine))
            stack.callback(baselines[-1].close)
        # All new, batch by batch: apply() (timed), its rows read back (untimed), the same rows
        # written by each driver method (timed). Interleaved, so that both sides of every ratio are
        # timed over the same seconds of this shared machine.
        updates, seconds = order_updates(n), 0.0
        for i in range(0, n, BATCH):
            chunk = updates[i : i + BATCH]
            start = time.perf_counter()
            store.apply(chunk, account=ACCOUNT)
            seconds += time.perf_counter() - start
            ids = (chunk[0].data["order_id"], chunk[-1].data["order_id"])
            stored = [read_back(backend, store.engine, t, ids) for t in TABLES]
            assert len(stored[0].rows) == len(stored[1].rows) == len(chunk), "one event per new order"
            for baseline in baselines:
                baseline.write(stored)
        run.rates[APPLY_MEASURES[0]] = n / seconds
        for baseline in baselines:
            check_identical(backend, store.engine, baseline.engine)
            run.rates[f"driver {baseline.method}"] = baseline.updates / baseline.seconds
        replay, newer = order_updates(n), order_updates(n, filled=5, seq0=10**9)
        run.rates[APPLY_MEASURES[1]] = rate(n, partial(apply_all, store, replay))
        run.rates[APPLY_MEASURES[2]] = rate(n, partial(apply_all, store, newer))
        grown = n
        for size in scales:
            bulk_fill(backend, store.engine, grown, size)
            grown = size
            touch = order_updates(10_000, filled=7, seq0=2 * 10**9 + size)
            fresh = order_updates(10_000, start=10_000_000 + size, seq0=3 * 10**9 + size)
            run.rates[f"{size:>9,} stored: 10k newer"] = rate(10_000, partial(apply_all, store, touch))
            run.rates[f"{size:>9,} stored: 10k new"] = rate(10_000, partial(apply_all, store, fresh))
    return run


def bulk_fill(backend: str, engine: sa.Engine, start: int, stop: int) -> None:
    """Grow the store to *stop* orders (and as many events) in SQL, copying one stored order (untimed)."""
    if stop <= start:
        return
    order_id = "printf('2402210%08d', s.i)" if backend == "sqlite" else "'2402210' || lpad(s.i::text, 8, '0')"
    series = "WITH RECURSIVE s(i) AS (SELECT {a} UNION ALL SELECT i + 1 FROM s WHERE i < {b}) "
    with engine.begin() as conn:
        for table in TABLES:
            cols = [r[0] for r in conn.exec_driver_sql(f"SELECT * FROM {table} LIMIT 0").cursor.description]
            select = ", ".join(order_id if c == "order_id" else f't."{c}"' for c in cols)
            for lo in range(start, stop, 100_000):
                conn.exec_driver_sql(
                    series.format(a=lo, b=min(stop, lo + 100_000) - 1)
                    + f"INSERT INTO {table} ({', '.join(chr(34) + c + chr(34) for c in cols)}) "
                    f"SELECT {select} FROM s, {table} t WHERE t.account = '{ACCOUNT}' "
                    f"AND t.order_id = '2402210{0:08d}'"
                )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("CHECKPOINT")
            for table in TABLES:
                conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.exec_driver_sql("ANALYZE")


# ------------------------------------------------------------------------------------------ summary
#: (backend, apply measure judged, baseline, minimum ratio)
GOALS = (
    ("sqlite", APPLY_MEASURES[0], "driver executemany", 0.75),
    ("postgresql", APPLY_MEASURES[0], "driver COPY", 0.75),
    ("postgresql", APPLY_MEASURES[0], "driver executemany", 1.0),
)


def print_summary(runs: list[Run]) -> bool:
    """Per backend: every rate (median, worst) and its ratio to each baseline, then the verdicts."""
    met = True
    per_backend = max(sum(r.backend == b for r in runs) for b in {r.backend for r in runs})
    print(f"\nStore throughput, order updates in batches of {BATCH}, {per_backend} run(s) per backend")
    print("ratios are taken within each run, then the worst and median over the runs\n")
    for backend in dict.fromkeys(r.backend for r in runs):
        mine = [r for r in runs if r.backend == backend]
        baselines = [m for m in mine[0].rates if m.startswith("driver ")]
        head = f"{'backend':<11} {'measure':<30} {'median/s':>10} {'worst/s':>10}"
        head += "".join(f"  {'x ' + b[7:] + ' (worst/median)':>32}" for b in baselines)
        print(head)
        print("-" * len(head))
        for measure in mine[0].rates:
            values = [r.rates[measure] for r in mine]
            line = f"{backend:<11} {measure:<30} {statistics.median(values):>10,.0f} {min(values):>10,.0f}"
            for b in baselines:
                ratios = [r.rates[measure] / r.rates[b] for r in mine]
                line += f"  {f'{min(ratios):.2f}x / {statistics.median(ratios):.2f}x':>32}"
            print(line)
        print()
    print("Goals (issue 15), judged on 'apply, all new', worst of the runs:")
    for backend, measure, baseline, goal in GOALS:
        mine = [r for r in runs if r.backend == backend]
        if not mine:
            continue
        ratios = [r.rates[measure] / r.rates[baseline] for r in mine]
        ok = min(ratios) >= goal
        met &= ok
        print(
            f"  {backend}: apply() all new >= {goal:.2f}x the {baseline} of the identical rows: "
            f"worst {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x "
            f"(runs: {', '.join(f'{x:.2f}' for x in ratios)}): {'met' if ok else 'NOT met'}"
        )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="admin URL; fresh databases are created and dropped")  # fmt: skip
    parser.add_argument("--updates", type=int, default=10_000, help="new orders per run (N)")
    parser.add_argument("--full", action="store_true", help="also scale to 100k and 1M stored orders")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend, each on fresh databases")
    args = parser.parse_args(argv)
    scales = [100_000, 1_000_000] if args.full else []
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(args.repeat, 1)):
            for backend in args.backends.split(","):
                try:
                    run = run_backend(backend, args.pg_url, args.updates, scales, Path(tmp))
                except sa.exc.OperationalError as exc:
                    print(f"{backend}: skipped, database not reachable ({exc.orig})", file=sys.stderr)
                    continue
                runs.append(run)
                figures = ", ".join(f"{k} {v:,.0f}/s" for k, v in run.rates.items())
                print(f"run {i + 1} {backend}: {figures}", flush=True)
    if runs:
        print_summary(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
