"""Concurrent writers and concurrent migrations on real servers."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import SCHEMA_VERSION, PortfolioStore, schema
from airflow_provider_upstox.store.migrations import current_version
from tests.store.helpers import event_keys, state_rows
from tests.store.histories import BASE_RECEIVED_US, timeline

_accounts = itertools.count()


def _merge(histories: list[tuple[list[Update], Any]], rng: random.Random) -> list[Update]:
    """Independent order timelines (renamed apart) plus position states, shuffled together."""
    updates: list[Update] = []
    for i, (tl, _) in enumerate(histories):
        for u in tl:
            data = dict(u.data, order_id=f"{u.data['order_id']}{i:03d}")
            updates.append(
                Update(
                    update_type="order",
                    data=data,
                    source=u.source,
                    seq=u.seq,
                    received_at_us=u.received_at_us,
                )
            )
    updates.extend(
        Update(
            update_type="position",
            seq=k,
            received_at_us=BASE_RECEIVED_US + k * 10,
            data={"instrument_token": f"NSE_EQ|INE{k % 7:09d}", "product": "D", "quantity": k},
        )
        for k in range(1, 60)
    )
    rng.shuffle(updates)
    return updates


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"])
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(histories=st.lists(timeline(max_orders=3), min_size=12, max_size=12), seed=st.integers(0, 2**32))
def test_two_concurrent_writers_with_overlapping_batches(
    make_database: Any, backend: str, histories: list[tuple[list[Update], Any]], seed: int
) -> None:
    url = make_database(backend)
    updates = _merge(histories, random.Random(seed))
    n = next(_accounts)
    ref_account, conc_account = f"REF{n}", f"CONC{n}"
    reference = PortfolioStore.from_url(url)
    for u in sorted(updates, key=lambda u: u.seq):
        reference.apply([u], account=ref_account)

    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(writer_seed: int) -> None:
        store = PortfolioStore.from_url(url)
        rng = random.Random(writer_seed)
        mine = updates[:] + rng.sample(updates, len(updates) // 2)  # overlapping, with duplicates
        rng.shuffle(mine)
        try:
            barrier.wait()
            for start in range(0, len(mine), 25):
                store.apply(mine[start : start + 25], account=conc_account)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            store.engine.dispose()

    threads = [threading.Thread(target=writer, args=(seed + s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    for table in (schema.orders, schema.positions):
        assert state_rows(reference, table, conc_account) == state_rows(reference, table, ref_account)
    assert event_keys(reference, conc_account) == event_keys(reference, ref_account)
    reference.engine.dispose()


_MIGRATE = """
import sys, time
from airflow_provider_upstox.store import PortfolioStore
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(PortfolioStore.from_url(sys.argv[1]).migrate())
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_migrate_from_concurrent_processes(make_database: object, backend: str) -> None:
    url = make_database(backend)  # type: ignore[operator]
    start = time.time() + 3.0  # both interpreters import first, then race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == str(SCHEMA_VERSION)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert current_version(conn) == SCHEMA_VERSION
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.store_meta)).scalar() == 1
        if backend == "sqlite":  # the journal mode switch raced too (it does not wait for locks)
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
