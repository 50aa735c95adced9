"""Portfolio store throughput: ``apply()`` against a plain executemany INSERT, in one run.

    python bench/store_throughput.py                 # PostgreSQL + SQLite, short (~30 s)
    python bench/store_throughput.py --full          # also scale to 1M stored rows (minutes, ~1-2 GB)
    python bench/store_throughput.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

For each backend, on a fresh database, with realistic order messages in batches of 500:

- baseline: ``executemany`` INSERT of the already-prepared ``upstox_orders`` rows into the empty
  table (no conflict handling, no events, no validation: the cheapest possible write);
- apply/new: ``apply()`` of the same updates on an empty store (validation, version, dedup, upsert
  into ``upstox_orders`` + insert-ignore into ``upstox_order_events``, progress row);
- apply/replay: the same updates again (all ignored: the idempotent path);
- apply/newer: a newer state of every order (all updated).

Then scaling: with 10k, 100k (and with ``--full`` 1M) orders already stored, apply 10k updates that
touch existing rows. Goal (issue 6): apply >= 0.5x baseline and >= 20,000 updates/s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import PortfolioStore, schema
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


def baseline_insert(engine: sa.Engine, updates: list[Update]) -> float:
    """Plain executemany INSERT of the same rows (prepared beforehand, untimed) into an empty table."""
    now = datetime.now(timezone.utc)
    rows = [prepare(u, "AB1234", now, 1).row for u in updates]
    with engine.begin() as conn:
        conn.execute(schema.orders.delete())

    def insert() -> None:
        for i in range(0, len(rows), BATCH):
            with engine.begin() as conn:
                conn.execute(schema.orders.insert(), rows[i : i + BATCH])

    result = rate(len(rows), insert)
    with engine.begin() as conn:
        conn.execute(schema.orders.delete())
    return result


def bulk_fill(engine: sa.Engine, n: int, start: int) -> None:
    """Pre-store *n* orders quickly (setup for the scaling runs; not timed)."""
    now = datetime.now(timezone.utc)
    for i in range(start, start + n, 5000):
        chunk = order_updates(min(5000, start + n - i), start=i)
        with engine.begin() as conn:
            conn.execute(schema.orders.insert(), [prepare(u, "AB1234", now, 1).row for u in chunk])


def run_backend(backend: str, url: str, n: int, scales: list[int]) -> None:
    store = PortfolioStore.from_url(url)
    store.migrate()
    base = baseline_insert(store.engine, order_updates(n))
    new = rate(n, lambda: apply_all(store, order_updates(n)))
    replay = rate(n, lambda: apply_all(store, order_updates(n)))
    newer = rate(n, lambda: apply_all(store, order_updates(n, status="open", filled=5, seq0=10**9)))
    print(f"\n{backend}: {n} order updates, batches of {BATCH}")
    print(f"  baseline executemany INSERT : {base:10,.0f} rows/s")
    for label, value in (
        ("apply, all new", new),
        ("apply, replay (ignored)", replay),
        ("apply, newer (updated)", newer),
    ):
        print(f"  {label:<28}: {value:10,.0f} updates/s   ratio {value / base:.2f}x baseline")
    stored = n
    for target in scales:
        bulk_fill(store.engine, target - stored, start=stored)
        stored = target
        touch = order_updates(10_000, start=0, status="open", filled=7, seq0=2 * 10**9 + target)
        value = rate(len(touch), lambda t=touch: apply_all(store, t))  # type: ignore[misc]
        print(f"  with {stored:>9,} orders stored, apply 10k newer states: {value:10,.0f} updates/s")
    store.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="admin URL; a fresh database is created and dropped")  # fmt: skip
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--full", action="store_true", help="also scale to 1M stored rows (slow)")
    parser.add_argument("--backends", default="postgresql,sqlite")
    args = parser.parse_args(argv)
    scales = [10_000, 100_000] + ([1_000_000] if args.full else [])
    for backend in args.backends.split(","):
        try:
            with fresh_database(backend, args.pg_url) as url:
                run_backend(backend, url, args.updates, [s for s in scales if s > args.updates])
        except sa.exc.OperationalError as exc:
            print(f"\n{backend}: skipped, database not reachable ({exc.orig})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
