"""Portfolio store throughput: ``apply()`` against a plain executemany INSERT, in one run.

    python bench/store_throughput.py                 # PostgreSQL + SQLite, short (~30 s)
    python bench/store_throughput.py --full          # also scale to 1M stored orders (minutes, ~3 GB)
    python bench/store_throughput.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/store_throughput.py --repeat 3      # medians of 3 fresh runs (noisy machines)

For each backend, on a fresh database, with realistic order messages in batches of 500:

- baselines: plain executemany INSERT of the already-prepared ``upstox_orders`` rows into the empty
  table (no conflict handling, no events, no validation): once through the driver's own
  ``cursor.executemany`` (values converted beforehand, the cheapest possible write) and once through
  SQLAlchemy Core (``conn.execute(table.insert(), rows)``);
- apply, all new: ``apply()`` of the same updates on an empty store (validation, version, dedup,
  upsert into ``upstox_orders`` + insert-ignore into ``upstox_order_events``, progress row);
- apply, replay: the same updates again (all ignored: the idempotent path);
- apply, newer: a newer state of every order (all updated).

Then scaling: the store is grown in SQL (copies of one stored order and its event) to 100k (and with
``--full`` 1M) orders, and 10k newer states of stored orders, then 10k new orders, are applied.
Everything ends in ONE summary table with each figure's ratio to both baselines of the same run.
Goal (issue 6): apply >= 0.5x a plain executemany INSERT and >= 20,000 updates/s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import PortfolioStore, bulk, schema
from airflow_provider_upstox.store.rows import prepare

BATCH = 500
BASE_US = 1_708_500_000_000_000


def order_updates(
    n: int, *, start: int = 0, status: str = "open", filled: int = 0, seq0: int = 0
) -> list[Update]:
    out = []
    for i in range(start, start + n):
        data = {
            "update_type": "order", "user_id": "AB1234", "exchange": "NSE",
            "instrument_token": f"NSE_EQ|INE{i % 5000:09d}", "instrument_key": f"NSE_EQ|INE{i % 5000:09d}",
            "trading_symbol": "NHPC-EQ", "product": "D", "order_type": "LIMIT", "average_price": 92.925,
            "price": 92.95, "trigger_price": 0, "quantity": 10, "disclosed_quantity": 0,
            "pending_quantity": 10 - filled, "transaction_type": "BUY", "order_ref_id": "57744821658411",
            "exchange_order_id": "1300000012345678", "parent_order_id": None, "validity": "DAY",
            "status": status, "is_amo": False, "variety": "SIMPLE", "tag": None,
            "exchange_timestamp": "2024-02-21 14:40:03", "status_message": "", "order_id": f"2402210{i:08d}",
            "order_request_id": "1", "order_timestamp": "2024-02-21 14:40:02", "filled_quantity": filled,
            "guid": None, "placed_by": "AB1234", "status_message_raw": None,
        }  # fmt: skip
        out.append(
            Update(update_type="order", data=data, seq=seq0 + i + 1, received_at_us=BASE_US + seq0 + i)
        )
    return out


@contextmanager
def fresh_database(backend: str, pg_admin_url: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
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


def rate(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def apply_all(store: PortfolioStore, updates: list[Update]) -> None:
    for i in range(0, len(updates), BATCH):
        store.apply(updates[i : i + BATCH], account="AB1234")


def _driver_params(backend: str, rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """A plain single-row INSERT and the rows as driver values (converted beforehand, untimed)."""
    columns = tuple(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    if backend == "sqlite":
        _, pack = bulk._sqlite_plan(schema.orders, columns, ("account", "order_id"), False)
        plain = f"INSERT INTO upstox_orders ({names}) VALUES ({', '.join('?' for _ in columns)})"
        return plain, bulk._sqlite_params(rows, pack)
    json_cols = {c for c in columns if isinstance(schema.orders.c[c].type, sa.JSON)}
    params = [[bulk._json(r[c]) if c in json_cols else r[c] for c in columns] for r in rows]
    return f"INSERT INTO upstox_orders ({names}) VALUES ({', '.join('%s' for _ in columns)})", params


def baselines(backend: str, engine: sa.Engine, updates: list[Update]) -> tuple[float, float]:
    """Plain executemany INSERTs of the same ``upstox_orders`` rows into the empty table, batches of 500.

    :returns: (driver ``cursor.executemany`` rows/s, SQLAlchemy Core ``conn.execute(insert, rows)`` rows/s).
    Rows are prepared and converted beforehand (untimed); no conflict handling, no events.
    """
    now = datetime.now(timezone.utc)
    rows = [prepare(u, "AB1234", now, 1).row for u in updates]
    sql, params = _driver_params(backend, rows)

    def driver() -> None:
        for i in range(0, len(params), BATCH):
            with engine.begin() as conn:
                cur = conn.connection.driver_connection.cursor()
                cur.executemany(sql, params[i : i + BATCH])
                cur.close()

    def core() -> None:
        for i in range(0, len(rows), BATCH):
            with engine.begin() as conn:
                conn.execute(schema.orders.insert(), rows[i : i + BATCH])

    results = []
    for fn in (driver, core):
        with engine.begin() as conn:
            conn.execute(schema.orders.delete())
        results.append(rate(len(rows), fn))
    with engine.begin() as conn:
        conn.execute(schema.orders.delete())
    return results[0], results[1]


def bulk_fill(backend: str, engine: sa.Engine, start: int, stop: int) -> None:
    """Grow the store to *stop* orders (and as many events) in SQL, copying one template row (untimed)."""
    if stop <= start:
        return
    order_id = "printf('2402210%08d', s.i)" if backend == "sqlite" else "'2402210' || lpad(s.i::text, 8, '0')"
    series = "WITH RECURSIVE s(i) AS (SELECT {a} UNION ALL SELECT i + 1 FROM s WHERE i < {b}) "
    template = f"2402210{0:08d}"  # order 0 (stored by the timed runs), copied under new ids
    with engine.begin() as conn:
        for table in (schema.orders, schema.order_events):
            cols = [c.name for c in table.c]
            select = ", ".join(f"{order_id}" if c == "order_id" else f't."{c}"' for c in cols)
            for lo in range(start, stop, 100_000):
                hi = min(stop, lo + 100_000) - 1
                conn.exec_driver_sql(
                    series.format(a=lo, b=hi)
                    + f"INSERT INTO {table.name} ({', '.join(chr(34) + c + chr(34) for c in cols)}) "
                    f"SELECT {select} FROM s, {table.name} t WHERE t.account = 'AB1234' "
                    f"AND t.order_id = '{template}'"
                )
    # Measure the store, not the fill's aftermath: flush its WAL and give the planner statistics.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("CHECKPOINT")
            conn.exec_driver_sql("VACUUM ANALYZE upstox_orders")
            conn.exec_driver_sql("VACUUM ANALYZE upstox_order_events")
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.exec_driver_sql("ANALYZE")


Row = tuple[str, str, float, str]


def run_backend(backend: str, url: str, n: int, scales: list[int]) -> list[Row]:
    store = PortfolioStore.from_url(url)
    store.migrate()
    driver, core = baselines(backend, store.engine, order_updates(n))
    out: list[Row] = [
        (backend, "baseline: driver executemany INSERT", driver, "rows/s"),
        (backend, "baseline: SQLAlchemy executemany INSERT", core, "rows/s"),
    ]
    for label, updates in (
        ("apply, all new", order_updates(n)),
        ("apply, replay (all ignored)", order_updates(n)),
        ("apply, newer (all updated)", order_updates(n, status="open", filled=5, seq0=10**9)),
    ):
        out.append((backend, label, rate(n, lambda u=updates: apply_all(store, u)), "updates/s"))  # type: ignore[misc]
    stored = n
    for target in scales:
        bulk_fill(backend, store.engine, stored, target)
        stored = target
        touch = order_updates(10_000, start=0, status="open", filled=7, seq0=2 * 10**9 + target)
        fresh = order_updates(10_000, start=10_000_000 + target, seq0=3 * 10**9 + target)
        value = rate(len(touch), lambda t=touch: apply_all(store, t))  # type: ignore[misc]
        out.append((backend, f"{stored:>9,} stored: apply 10k newer states", value, "updates/s"))
        value = rate(len(fresh), lambda t=fresh: apply_all(store, t))  # type: ignore[misc]
        out.append((backend, f"{stored:>9,} stored: apply 10k new orders", value, "updates/s"))
    store.engine.dispose()
    return out


def print_summary(rows: list[Row]) -> None:
    """One table: every figure with its ratio to both baselines of the same backend, same run."""
    base = {(b, "driver"): v for b, label, v, _ in rows if label.startswith("baseline: driver")}
    base |= {(b, "core"): v for b, label, v, _ in rows if label.startswith("baseline: SQLAlchemy")}
    print(f"\nStore throughput, order updates in batches of {BATCH} (ratios: same run, same backend)")
    header = f"{'backend':<11} {'measure':<42} {'rate':>12}  {'unit':<10} {'x driver':>8} {'x SQLA':>7}"
    print(header)
    print("-" * len(header))
    for backend, label, value, unit in rows:
        drv = value / base[(backend, "driver")]
        core = value / base[(backend, "core")]
        print(f"{backend:<11} {label:<42} {value:>12,.0f}  {unit:<10} {drv:>7.2f}x {core:>6.2f}x")
    print(
        "\nGoal (issue 6): apply >= 0.5x a plain executemany INSERT of the same rows into an empty"
        " table, and >= 20,000 updates/s on PostgreSQL."
    )
    for line in verdicts(rows):
        print(line)


#: The three batch measures the goal is checked on (the scaling rows are reported, not judged).
_JUDGED = ("apply, all new", "apply, replay (all ignored)", "apply, newer (all updated)")


def verdicts(rows: list[Row]) -> list[str]:
    """One line per backend: the goal checked on the worst of the judged measures of this run."""
    out = []
    for backend in dict.fromkeys(b for b, *_ in rows):
        driver = next(v for b, label, v, _ in rows if b == backend and label.startswith("baseline: driver"))
        judged = [(label, v) for b, label, v, _ in rows if b == backend and label in _JUDGED]
        if not judged:
            continue
        worst_label, worst = min(judged, key=lambda item: item[1])
        ratio = worst / driver
        line = f"{backend}: worst measure '{worst_label}' {worst:,.0f} updates/s = {ratio:.2f}x the driver"
        checks = [f">= 0.5x: {'met' if ratio >= 0.5 else 'NOT met'}"]
        if backend == "postgresql":
            checks.append(f">= 20,000/s: {'met' if worst >= 20_000 else 'NOT met'}")
        out.append(f"{line} ({'; '.join(checks)})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="admin URL; a fresh database is created and dropped")  # fmt: skip
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--full", action="store_true", help="also scale to 1M stored rows (slow)")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--repeat", type=int, default=1,
                        help="whole runs per backend, each on a fresh database; every figure (baselines "
                             "included) is the median over the runs, for noisy machines")  # fmt: skip
    args = parser.parse_args(argv)
    scales = [10_000, 100_000] + ([1_000_000] if args.full else [])
    results: list[Row] = []
    for backend in args.backends.split(","):
        try:
            runs = []
            for _ in range(max(args.repeat, 1)):
                with fresh_database(backend, args.pg_url) as url:
                    runs.append(
                        run_backend(backend, url, args.updates, [s for s in scales if s >= args.updates])
                    )
            results += median_rows(runs)
        except sa.exc.OperationalError as exc:
            print(f"\n{backend}: skipped, database not reachable ({exc.orig})", file=sys.stderr)
    if results:
        print_summary(results)
        if args.repeat > 1:
            print(f"(medians of {args.repeat} runs, each on a fresh database)")
    return 0


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """Per measure, the median rate over *runs* (the same measures in the same order in each)."""
    return [
        (backend, label, statistics.median(run[i][2] for run in runs), unit)
        for i, (backend, label, _, unit) in enumerate(runs[0])
    ]


if __name__ == "__main__":
    raise SystemExit(main())
