"""``persist_asset_events``: every event after the watermark, each once, in order, on a real store.

The inlet-events accessor is a small stand-in with the real ``after()`` semantics (inclusive,
ascending), because the cases that matter (an event committed late with an older timestamp, a
second run over the same events) cannot be produced on demand with a real scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.sdk import Asset

from airflow_provider_upstox.models.updates import Update, encode_updates, next_seq, now_us
from airflow_provider_upstox.operators import asset_events
from airflow_provider_upstox.store import PortfolioStore
from tests.operators.notifiers import RecordingNotifier

ASSET = Asset(name="upstox_events__upstox_default", uri="upstox://upstox_default/events")
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)


@dataclass
class Event:
    id: int
    timestamp: datetime
    extra: dict[str, Any]


@dataclass
class Accessor:
    events: list[Event]
    queries: list[str | None] = field(default_factory=list)
    _after: str | None = None
    #: events committed right after each query (while the task is still running), one list per query
    arrivals: list[list[Event]] = field(default_factory=list)

    def after(self, after: str) -> Accessor:
        return Accessor(self.events, self.queries, after, self.arrivals)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.queries.append(self._after)
        bound = datetime.fromisoformat(self._after) if self._after else None
        result = sorted(
            (e for e in self.events if bound is None or e.timestamp >= bound), key=lambda e: e.timestamp
        )
        if self.arrivals:
            self.events.extend(self.arrivals.pop(0))
        return iter(result)


def order_event(event_id: int, seconds: float, order_id: str, status: str, filled: int) -> Event:
    update = Update(
        update_type="order",
        data={
            "order_id": order_id,
            "status": status,
            "filled_quantity": filled,
            "quantity": 5,
            "order_timestamp": "2025-03-03 14:30:00",
            "exchange_timestamp": f"2025-03-03 14:30:{filled:02d}",
            "user_id": "AB1234",
        },
        seq=next_seq(),
        received_at_us=now_us(),
    )
    payload = {"status": "batch", "account": "AB1234", "updates": encode_updates([update])}
    return Event(event_id, T0 + timedelta(seconds=seconds), {"from_trigger": True, "payload": payload})


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PortfolioStore:
    s = PortfolioStore.from_url(f"sqlite:///{tmp_path / 'store.db'}")
    s.migrate()
    monkeypatch.setattr(asset_events, "open_store", lambda conn_id: s)
    return s


def rows(store: PortfolioStore) -> dict[str, tuple[str, int]]:
    with store.engine.connect() as conn:
        return {
            r.order_id: (r.status, r.filled_quantity)
            for r in conn.execute(sa.text("SELECT order_id, status, filled_quantity FROM upstox_orders"))
        }


def test_reads_everything_after_the_watermark_once(store: PortfolioStore) -> None:
    accessor = Accessor([order_event(1, 0, "1", "open", 0), order_event(2, 1, "1", "open", 2)])
    context = {"inlet_events": {ASSET: accessor}}
    first = asset_events.persist_asset_events(context, ASSET)
    assert (first["events"], first["batches"], first["skipped"]) == (2, 2, 0)
    assert first["passes"] == 2  # the second read found nothing new
    assert rows(store) == {"1": ("open", 2)}

    # A quiet period, then a burst: all of it is read, nothing twice.
    accessor.events += [order_event(3, 30, "1", "complete", 5), order_event(4, 31, "2", "open", 0)]
    second = asset_events.persist_asset_events(context, ASSET)
    assert second["batches"] == 2
    assert accessor.queries[-1] is not None  # read from the watermark, not from the beginning
    assert rows(store) == {"1": ("complete", 5), "2": ("open", 0)}

    # Nothing new: nothing applied.
    again = asset_events.persist_asset_events(context, ASSET)
    assert again["batches"] == 0


def test_late_event_with_older_timestamp_is_not_lost(store: PortfolioStore) -> None:
    accessor = Accessor([order_event(10, 10, "7", "open", 0)])
    context = {"inlet_events": {ASSET: accessor}}
    asset_events.persist_asset_events(context, ASSET)
    # Committed after the first read, stamped 5 s earlier (another triggerer's clock).
    accessor.events.append(order_event(11, 5, "8", "complete", 5))
    result = asset_events.persist_asset_events(context, ASSET)
    assert result["batches"] == 1
    assert result["skipped"] == 1  # event 10 seen again in the look-back window and skipped
    assert rows(store)["8"] == ("complete", 5)


def test_out_of_order_events_end_in_the_newest_state(store: PortfolioStore) -> None:
    accessor = Accessor([order_event(21, 0, "9", "complete", 5), order_event(20, 1, "9", "open", 1)])
    asset_events.persist_asset_events({"inlet_events": {ASSET: accessor}}, ASSET)
    assert rows(store) == {"9": ("complete", 5)}


def test_events_committed_during_the_run_are_applied_before_it_ends(store: PortfolioStore) -> None:
    """The gap of apache/airflow#56050: an event committed while the run is active must not wait
    for a later event to start the next run. The task reads again until a read finds nothing new."""
    accessor = Accessor(
        [order_event(30, 0, "5", "open", 0)],
        arrivals=[[order_event(31, 2, "5", "open", 3)], [order_event(32, 3, "6", "complete", 5)]],
    )
    result = asset_events.persist_asset_events({"inlet_events": {ASSET: accessor}}, ASSET)
    assert (result["events"], result["passes"], result["watermark_event_id"]) == (3, 4, 32)
    assert rows(store) == {"5": ("open", 3), "6": ("complete", 5)}
    assert all(q is not None for q in accessor.queries[1:])  # later reads start at the watermark


def test_draining_is_bounded(store: PortfolioStore) -> None:
    """A flood cannot keep one task running forever: past ``drain_seconds`` it stops after the pass
    it is in, with everything read so far applied; the next run (queued by the flood) goes on."""
    accessor = Accessor(
        [order_event(40, 0, "7", "open", 0)],
        arrivals=[[order_event(41 + i, 1 + i, "7", "open", 1 + i)] for i in range(3)],
    )
    context = {"inlet_events": {ASSET: accessor}}
    first = asset_events.persist_asset_events(context, ASSET, drain_seconds=0)
    assert (first["passes"], first["events"]) == (1, 1)
    assert rows(store) == {"7": ("open", 0)}
    second = asset_events.persist_asset_events(context, ASSET)
    assert second["events"] == 3
    assert rows(store) == {"7": ("open", 3)}


def test_bad_events_are_counted_and_skipped_without_blocking_the_rest(store: PortfolioStore) -> None:
    """A hand-made event, a damaged payload, an error event in the shape earlier versions stored: each
    is counted under its own name, and the batches around them are still applied."""
    old_error = {"status": "error", "error_type": "authentication", "exception": "UpstoxAuthenticationError",
                 "message": "token expired", "fatal": True, "account": None}  # fmt: skip
    accessor = Accessor(
        [
            order_event(50, 0, "11", "open", 0),
            Event(51, T0 + timedelta(seconds=1), {}),  # e.g. created by hand in the UI
            Event(52, T0 + timedelta(seconds=2), {"from_trigger": True, "payload": {"status": "batch"}}),
            Event(53, T0 + timedelta(seconds=3), {"from_trigger": True, "payload": old_error}),
            order_event(54, 4, "11", "complete", 5),
        ]
    )
    result = asset_events.persist_asset_events({"inlet_events": {ASSET: accessor}}, ASSET)
    assert (result["events"], result["batches"], result["foreign"], result["invalid"], result["errors"]) == (
        5, 2, 1, 1, 1,
    )  # fmt: skip
    assert result["watermark_event_id"] == 54
    assert rows(store) == {"11": ("complete", 5)}


def test_token_wait_events_reach_the_notifier_once_per_episode(store: PortfolioStore) -> None:
    """The watcher reports a refusal episode once; the consumer counts it, applies the batches around
    it and calls ``on_token_refused`` once, without touching the watermark logic."""
    since = 1_741_000_000_000_000
    wait = {"status": "token_wait", "refused_fingerprint": "0123456789abcdef", "since_us": since,
            "probed_at_us": since, "probes": 0, "message": "token expired", "account": "AB1234"}  # fmt: skip
    accessor = Accessor(
        [
            order_event(60, 0, "12", "open", 0),
            Event(61, T0 + timedelta(seconds=1), {"from_trigger": True, "payload": wait}),
            order_event(62, 9, "12", "complete", 5),
        ]
    )
    notifier = RecordingNotifier()
    operator = asset_events.UpstoxPersistAssetEventsOperator(
        task_id="persist", assets=[ASSET], on_token_refused=notifier
    )
    result = operator.execute({"inlet_events": {ASSET: accessor}})[ASSET.name]
    assert (result["events"], result["batches"], result["token_refusals"], result["errors"]) == (3, 2, 1, 0)
    assert rows(store) == {"12": ("complete", 5)}
    assert notifier.calls == [
        {
            "asset": ASSET.name,
            "account": "AB1234",
            "since": "2025-03-03T11:06:40+00:00",
            "message": "token expired",
        }
    ]
    # A second run over the same events (HA scheduler) applies and notifies nothing again.
    again = operator.execute({"inlet_events": {ASSET: accessor}})[ASSET.name]
    assert again["token_refusals"] == 0
    assert len(notifier.calls) == 1


def test_stream_health_follows_the_newest_event_of_the_watcher(store: PortfolioStore) -> None:
    """The health row of the asset's connection: newest event wins, replays change nothing."""
    error = {"status": "error", "error_type": "stream", "exception": "UpstoxStreamError",
             "message": "socket closed", "account": "AB1234"}  # fmt: skip
    accessor = Accessor(
        [
            order_event(60, 0, "12", "open", 0),
            Event(61, T0 + timedelta(seconds=2), {"from_trigger": True, "payload": error}),
        ]
    )
    context = {"inlet_events": {ASSET: accessor}}
    asset_events.persist_asset_events(context, ASSET)
    (row,) = store.read_stream_health()
    assert (row["conn_id"], row["consumer"], row["state"]) == ("upstox_default", "watcher", "error")
    assert (row["error_kind"], row["account"]) == ("stream", "AB1234")
    assert row["observed_at"] == T0 + timedelta(seconds=2)
    assert "socket closed" not in repr(row)  # the kind, never the text
    accessor.events.append(order_event(62, 3, "12", "complete", 5))
    asset_events.persist_asset_events(context, ASSET)
    (row,) = store.read_stream_health()
    assert (row["state"], row["state_since"]) == ("connected", T0 + timedelta(seconds=3))
