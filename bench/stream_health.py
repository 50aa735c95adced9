"""Stream health: what recording it costs a batch, and what the Streams view costs for 1,000 accounts.

    python bench/stream_health.py                  # SQLite + PostgreSQL (~20 s)
    python bench/stream_health.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

1. Per backend, on a fresh store: batches of ``--batch`` new order updates, ``apply()``-ed
   alternately without and with the batch's health row (``health_records=``: one upsert more in
   the batch's transaction, as the stream operators write it), so both are timed over the same
   seconds. Printed: both medians and with / without. Goal: <= 1.10 for a batch of 100 (the row
   is one statement, 0.5-1.5 ms; on a machine shared with other jobs the ratio moves by as much).
2. 1,000 connections' health rows in the store; the view of the plugin as one request builds it
   (``read_stream_health`` + join with 1,000 token states + sort + one page of 200 rendered to
   HTML), against the baseline of the bare read (``read_stream_health``) in the same run. Printed:
   both medians and the ratio. Goal: the view <= 3x the bare read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from airflow_provider_upstox.models.events import BatchEvent, EventStats
from airflow_provider_upstox.models.updates import Update, next_seq, now_us
from airflow_provider_upstox.plugins import streams
from airflow_provider_upstox.plugins.status import TokenStatus
from airflow_provider_upstox.plugins.streams_page import streams_page
from airflow_provider_upstox.store import PortfolioStore, health


def _order(i: int, n: int) -> Update:
    data = {"order_id": f"2502{i:06d}{n:04d}", "status": "open", "user_id": "AB1234", "quantity": 1,
            "filled_quantity": 0, "order_timestamp": "2025-03-03 10:00:00", "exchange": "NSE"}  # fmt: skip
    return Update(update_type="order", data=data, seq=next_seq(), received_at_us=now_us(), account="AB1234")


def bench_record(store: PortfolioStore, batches: int, size: int) -> tuple[float, float]:
    """Medians of ``apply()`` without and with the batch's health row (alternating batches)."""
    plain, with_health = [], []
    for i in range(batches):
        updates = [_order(i, n) for n in range(size)]
        event = BatchEvent(updates=updates, account="AB1234", stats=EventStats(connection=1, lag_ms=5.0))
        records = [health.from_event("bench", event, health.TASK, datetime.now(timezone.utc))]
        t0 = time.perf_counter()
        store.apply(
            updates, account="AB1234", stream_key="conn:bench", health_records=records if i % 2 else ()
        )
        (with_health if i % 2 else plain).append(time.perf_counter() - t0)
    return statistics.median(plain), statistics.median(with_health)


def bench_view(store: PortfolioStore, accounts: int, repeat: int) -> tuple[float, float]:
    now = datetime.now(timezone.utc)
    stats = EventStats(connection=1, messages=10, lag_ms=20.0)
    event = BatchEvent(updates=[], account="AB1234", stats=stats)
    store.record_stream_health(
        [
            health.from_event(f"upstox_{i:04d}", event, health.TASK, now - timedelta(seconds=i))
            for i in range(accounts)
        ]
    )
    tokens = [
        TokenStatus(
            f"upstox_{i:04d}", "unknown", "AB1234", None, None, 1_900_000_000_000, None, None, False, None
        )
        for i in range(accounts)
    ]
    reads, views = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        store.read_stream_health()
        t1 = time.perf_counter()
        items = streams.build(store.read_stream_health(), tokens, lambda _c: True)
        page, total = streams.page_of(items, 0, streams.DEFAULT_LIMIT, None)
        counts = streams.summary(items)
        html = streams_page(page, counts, total=total, offset=0, limit=len(page), only=None,
                            base_url="/upstox/streams", problem=None, stale_after_s=600)  # fmt: skip
        t2 = time.perf_counter()
        assert len(html) > 100 * min(accounts, streams.DEFAULT_LIMIT)
        assert total == accounts + 1  # and the connection of part 1
        reads.append(t1 - t0)
        views.append(t2 - t1)
    return statistics.median(reads), statistics.median(views)


def _pg_database(admin_url: str) -> tuple[str, sa.Engine, str]:
    name = f"upx_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False), admin, name


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", None)]
        try:
            url, admin, name = _pg_database(args.pg_url)
            backends.append(("postgresql", url, (admin, name)))
        except sa.exc.OperationalError as exc:
            print(f"postgresql skipped: {type(exc).__name__}")
        for backend, url, cleanup in backends:
            store = PortfolioStore.from_url(url)
            store.migrate()
            try:
                plain_s, health_s = bench_record(store, args.batches, args.batch)
                read_s, view_s = bench_view(store, args.accounts, args.repeat)
            finally:
                store.engine.dispose()
                if cleanup is not None:
                    with cleanup[0].connect() as conn:
                        conn.exec_driver_sql(f"DROP DATABASE {cleanup[1]}")
            print(
                f"{backend:10s} batch of {args.batch}: apply {plain_s * 1e3:6.2f} ms, with health "
                f"{health_s * 1e3:6.2f} ms, with/without {health_s / plain_s:4.2f} (goal <= 1.10)"
            )
            print(
                f"{backend:10s} {args.accounts} accounts: read {read_s * 1e3:6.1f} ms, "
                f"view {view_s * 1e3:6.1f} ms, view/read {view_s / read_s:4.2f} (goal <= 3)"
            )


if __name__ == "__main__":
    main()
