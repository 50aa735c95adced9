"""One persist task for many watched assets (issue 18): one drain loop, watermarks in bulk, and the
history backfill mapped over only the accounts with work, on a real store (and the simulator for
the backfill itself). The accessor stand-in is that of ``test_asset_events``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import Asset

from airflow_provider_upstox.models.events import encode_group
from airflow_provider_upstox.models.updates import SNAPSHOT, STREAM, Update, encode_updates, next_seq, now_us
from airflow_provider_upstox.operators import asset_events
from airflow_provider_upstox.operators.history_backfill import (
    UpstoxHistoryBackfillOperator,
    trade_book_due_key,
)
from airflow_provider_upstox.store import PortfolioStore
from tests.fixtures.databases import airflow_connection
from tests.operators.test_asset_events import T0, Accessor, Event

ASSETS = [Asset(name=f"upstox_events__c{i}", uri=f"upstox://c{i}/events") for i in (1, 2, 3)]


def event(
    event_id: int, seconds: float, account: str, order_id: str, filled: int, source: str = STREAM
) -> Event:
    update = Update(
        update_type="order",
        data={
            "order_id": order_id,
            "status": "open",
            "filled_quantity": filled,
            "quantity": 5,
            "order_timestamp": "2025-03-03 14:30:00",
            "exchange_timestamp": f"2025-03-03 14:30:{filled:02d}",
            "user_id": account,
        },
        source=source,
        seq=next_seq(),
        received_at_us=now_us(),
    )
    payload = {"status": "batch", "account": account, "updates": encode_updates([update])}
    return Event(event_id, T0 + timedelta(seconds=seconds), {"from_trigger": True, "payload": payload})


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PortfolioStore:
    s = PortfolioStore.from_url(f"sqlite:///{tmp_path / 'store.db'}")
    s.migrate()
    monkeypatch.setattr(asset_events, "open_store", lambda conn_id: s)
    return s


def filled(store: PortfolioStore) -> dict[tuple[str, str], int]:
    return {
        (account, key): int(obj["filled_quantity"])
        for account in ("U1", "U2", "U3")
        for key, obj in store.read_stored_objects(account, "order").items()
    }


def test_one_loop_reads_again_only_the_assets_that_had_news(store: PortfolioStore) -> None:
    accessors = {
        ASSETS[0]: Accessor([event(1, 0, "U1", "o1", 0), event(2, 1, "U1", "o1", 2)]),
        ASSETS[1]: Accessor([event(3, 0, "U2", "o2", 1)]),
        ASSETS[2]: Accessor([]),
    }
    context = {"inlet_events": accessors}
    first = asset_events.persist_assets_events(context, ASSETS)
    assert [first[a.name]["events"] for a in ASSETS] == [2, 1, 0]
    # The quiet asset was read once; the others once more, which found nothing new.
    assert [first[a.name]["passes"] for a in ASSETS] == [2, 2, 1]
    assert filled(store) == {("U1", "o1"): 2, ("U2", "o2"): 1}
    marks = store.load_operator_progress_many([asset_events.watermark_key(a) for a in ASSETS])
    assert sorted(marks) == [asset_events.watermark_key(a) for a in ASSETS[:2]]  # none for the quiet one
    mark = marks["asset_events:upstox_events__c1"]
    assert (mark["event_id"], mark["conns"]) == (2, {"U1": "c1"})

    accessors[ASSETS[1]].events.append(event(4, 30, "U2", "o2", 4))
    second = asset_events.persist_assets_events(context, ASSETS)
    assert [second[a.name]["events"] for a in ASSETS] == [0, 1, 0]
    assert accessors[ASSETS[0]].queries[-1] is not None  # read from its watermark
    assert filled(store) == {("U1", "o1"): 2, ("U2", "o2"): 4}
    # the single-asset function and the many-asset one share the watermark
    assert asset_events.persist_asset_events(context, ASSETS[1])["events"] == 0


def test_backfill_groups_hold_only_the_accounts_with_work(store: PortfolioStore) -> None:
    """A (re)connect (snapshot rows) makes the trade book due until a backfill reads it; a non-empty
    history queue needs a backfill too; an account with neither gets no task."""
    context = {
        "inlet_events": {
            ASSETS[0]: Accessor([event(1, 0, "U1", "o1", 0, SNAPSHOT)]),
            ASSETS[1]: Accessor([event(2, 0, "U2", "o2", 0, SNAPSHOT)]),
            ASSETS[2]: Accessor([event(3, 0, "U3", "o3", 0)]),
        }
    }
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))
    operator = asset_events.UpstoxPersistAssetEventsOperator(
        task_id="persist", assets=ASSETS, return_backfill_groups=True, backfill_group_size=1
    )
    assert operator.execute({**context, "ti": ti}) == [["c1"], ["c2"]]
    assert pushed["counts"]["upstox_events__c3"]["events"] == 1

    # The snapshots also queued the histories of the orders they showed first.
    assert (store.pending_history_backfill("U1"), store.pending_history_backfill("U3")) == (["o1"], [])

    # c1's backfill done (as the backfill operator records it): only c2 is left.
    now = datetime.now(timezone.utc)
    store.record_order_history("U1", "o1", [], [], now)
    store.save_operator_progress(trade_book_due_key("c1"), {"due": False})
    assert operator.execute({**context, "ti": ti}) == [["c2"]]
    store.save_operator_progress(trade_book_due_key("c2"), {"due": False})
    assert operator.execute({**context, "ti": ti}) == [["c2"]]  # its history read is still queued
    store.record_order_history("U2", "o2", [], [], now)
    assert operator.execute({**context, "ti": ti}) == []

    # A queued history read of U3 (an order the store never saw) makes c3 need a backfill.
    snapshot = Update(
        update_type="order",
        data={"order_id": "gap", "status": "complete", "filled_quantity": 5, "quantity": 5,
              "order_timestamp": "2025-03-03 14:30:00", "user_id": "U3"},
        source=SNAPSHOT, seq=next_seq(), received_at_us=now_us(),
    )  # fmt: skip
    assert store.queue_history_backfill("U3", [snapshot]) == {"gap": "unseen"}
    assert operator.execute({**context, "ti": ti}) == [["c3"]]


@pytest.mark.simulator(scenario="quiet", seed=4)
def test_group_backfill_reads_the_trade_book_only_where_due(
    simulator: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstox = {"conn_type": "upstox", "password": simulator.token, "host": simulator.base_url}
    for conn_id in ("C1", "C2"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", json.dumps(upstox))
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_STORE", json.dumps(airflow_connection(db_url)))
    store = PortfolioStore.from_url(db_url)
    store.migrate()
    store.save_operator_progress(trade_book_due_key("c1"), {"due": True})
    operator = UpstoxHistoryBackfillOperator(
        task_id="backfill", upstox_conn_ids=["c1", "c2"], sql_conn_id="upstox_store"
    )
    result = operator.execute({})
    assert (result["c1"]["trade_book_read"], result["c1"]["calls"]) == (True, 1)
    assert (result["c2"]["trade_book_read"], result["c2"]["calls"]) == (False, 0)
    assert store.load_operator_progress(trade_book_due_key("c1")) == {"due": False}
    again = operator.execute({})
    assert again["c1"]["calls"] == 0  # read once per (re)connect, not once per run
    store.engine.dispose()


@pytest.mark.parametrize("shape", ["compressed", "string", "nested"])
def test_group_asset_events_name_their_connection(store: PortfolioStore, shape: str) -> None:
    """A group watcher's event holds member events, each with its ``conn_id``: all are applied, the
    backfill runs for the right connection, and the account -> connection map survives in the
    watermark for queued work found in later runs. A bad member is counted, not fatal. Members as
    one compressed string (what the trigger sends), or as one JSON string or a nested list (events
    of earlier versions)."""
    group = Asset(name="upstox_events_group__g0", uri="upstox://groups/g0/events")
    snap, live = event(1, 0, "U1", "o1", 0, SNAPSHOT), event(2, 0, "U2", "o2", 3)
    members = [
        {**snap.extra["payload"], "conn_id": "c1"},
        {"status": "batch", "conn_id": "c9"},  # damaged
        {**live.extra["payload"], "conn_id": "c2"},
    ]
    payload = {
        "compressed": encode_group(members),
        "string": {"status": "group", "members": json.dumps(members)},
        "nested": {"status": "group", "members": members},
    }[shape]
    merged = Event(7, T0, {"from_trigger": True, "payload": payload})
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))
    context = {"inlet_events": {group: Accessor([merged])}, "ti": ti}
    operator = asset_events.UpstoxPersistAssetEventsOperator(
        task_id="persist", assets=[group], return_backfill_groups=True
    )
    assert operator.execute(context) == [["c1"]]
    counts = pushed["counts"][group.name]
    assert (counts["events"], counts["batches"], counts["invalid"]) == (1, 2, 1)
    assert filled(store) == {("U1", "o1"): 0, ("U2", "o2"): 3}
    mark = store.load_operator_progress(asset_events.watermark_key(group))
    assert mark is not None
    assert mark["conns"] == {"U1": "c1", "U2": "c2"}
    # Each member's connection gets its own stream health row (the Streams page), not the group's.
    assert sorted(row["conn_id"] for row in store.read_stream_health()) == ["c1", "c2"]
