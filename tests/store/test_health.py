"""``upstox_stream_health`` on SQLite, PostgreSQL and MariaDB: the rows the Streams page reads.

Each event moves its connection's row forward; a repeated or late event (HA triggerers, a second
DAG run) changes nothing; counters an error event does not carry are kept; the row never holds an
error's text (it could name anything) and never a token.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    ErrorKind,
    EventStats,
    IdleEvent,
    TokenWaitEvent,
)
from airflow_provider_upstox.models.updates import SNAPSHOT, STREAM, Update
from airflow_provider_upstox.store import SCHEMA_VERSION, PortfolioStore, health, schema
from airflow_provider_upstox.store.migrations import current_version

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=timezone.utc)
SECRET = "eyJhbGciOiJIUzI1NiJ9.token-that-must-never-be-stored"


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1e6)


def _order(received: datetime, source: str = STREAM, n: int = 1) -> Update:
    data = {"order_id": f"O-{n}", "status": "open", "user_id": "AB1234"}
    return Update(
        update_type="order", data=data, source=source, seq=n, received_at_us=_us(received), account="AB1234"
    )


def _batch(*updates: Update, reconnects: int = 0, lag_ms: float | None = 12.5) -> BatchEvent:
    stats = EventStats(
        connection=reconnects + 1, messages=40, reconnects=reconnects, pending=3, lag_ms=lag_ms
    )
    return BatchEvent(updates=list(updates), account="AB1234", stats=stats)


def _record(store: PortfolioStore, event: object, at: datetime, conn_id: str = "upstox_a") -> dict:
    store.record_stream_health([health.from_event(conn_id, event, health.TASK, at)])  # type: ignore[arg-type]
    return {r["conn_id"]: r for r in store.read_stream_health()}[conn_id]


def test_a_batch_records_a_connected_stream(store: PortfolioStore) -> None:
    newest = T0 + timedelta(seconds=5)
    row = _record(store, _batch(_order(T0, n=1), _order(newest, n=2), _order(T0, SNAPSHOT, 3)), T0)
    assert row["state"] == health.CONNECTED
    assert row["account"] == "AB1234"
    assert row["consumer"] == "task"
    assert row["last_message_at"] == newest  # the newest live message, not the snapshot row
    assert (row["reconnects"], row["connection_epoch"], row["messages"], row["pending"]) == (0, 1, 40, 3)
    assert row["lag_ms"] == 12.5
    assert row["state_since"] == row["observed_at"] == T0
    assert row["error_kind"] is None
    assert row["token_refused_since"] is None


def test_late_and_repeated_events_change_nothing(store: PortfolioStore) -> None:
    _record(store, _batch(_order(T0), reconnects=2), T0 + timedelta(seconds=10))
    error = ErrorEvent(kind=ErrorKind.STREAM, exception="UpstoxStreamError", message="x", account="AB1234")
    after_error = _record(store, error, T0 + timedelta(seconds=20))
    # the batch event of 10 s delivered again (HA triggerer, second DAG run): older than the error
    late = _record(store, _batch(_order(T0), reconnects=2), T0 + timedelta(seconds=10))
    assert late["state"] == health.ERROR
    assert {k: v for k, v in late.items() if k != "last_event_at"} == {
        k: v for k, v in after_error.items() if k != "last_event_at"
    }
    again = _record(store, error, T0 + timedelta(seconds=20))  # the same event twice
    assert again["state_since"] == after_error["state_since"] == T0 + timedelta(seconds=20)


def test_error_keeps_counters_and_reconnect_keeps_the_last_error_kind(store: PortfolioStore) -> None:
    _record(store, _batch(_order(T0 + timedelta(seconds=1)), reconnects=1), T0)
    error = ErrorEvent(
        kind=ErrorKind.TRANSPORT, exception="UpstoxTransportError", message=f"failed {SECRET}", account=None
    )
    row = _record(store, error, T0 + timedelta(seconds=30))
    assert (row["state"], row["error_kind"], row["error_at"]) == (
        "error",
        "transport",
        T0 + timedelta(seconds=30),
    )
    assert row["reconnects"] == 1
    assert row["account"] == "AB1234"
    assert row["last_message_at"] == T0 + timedelta(seconds=1)
    # reconnected: a batch of snapshot rows only (no live message yet), then idle
    row = _record(store, _batch(_order(T0, SNAPSHOT), reconnects=2, lag_ms=None), T0 + timedelta(seconds=40))
    assert row["state"] == "connected"
    assert row["state_since"] == T0 + timedelta(seconds=40)
    assert row["reconnects"] == 2
    assert row["lag_ms"] == 12.5
    assert row["last_message_at"] == T0 + timedelta(seconds=1)  # only grows
    assert row["error_kind"] == "transport"  # the last error stays visible after recovery
    idle = IdleEvent(idle_since_us=_us(T0), account="AB1234", stats=EventStats(connection=3, reconnects=2))
    row = _record(store, idle, T0 + timedelta(seconds=100))
    assert row["state"] == "idle"
    assert row["connection_epoch"] == 3
    assert SECRET not in repr(store.read_stream_health())


def test_token_wait_is_recorded_and_cleared_on_reconnect(store: PortfolioStore) -> None:
    since = T0 + timedelta(minutes=1)
    wait = TokenWaitEvent(refused_fingerprint="ab" * 8, since_us=_us(since), probed_at_us=_us(since))
    row = _record(store, wait, since)
    assert (row["state"], row["token_refused_since"], row["account"]) == ("token_wait", since, None)
    row = _record(store, _batch(_order(since + timedelta(seconds=3))), since + timedelta(minutes=5))
    assert row["state"] == "connected"
    assert row["token_refused_since"] is None


def test_one_statement_for_many_connections_newest_per_connection(store: PortfolioStore) -> None:
    records = [
        health.from_event(f"upstox_{i:04d}", _batch(_order(T0)), health.WATCHER, T0) for i in range(1000)
    ]
    records.append(
        health.from_event(
            "upstox_0007",
            ErrorEvent(kind=ErrorKind.API, exception="E", message="m"),
            health.WATCHER,
            T0 + timedelta(seconds=1),
        )
    )
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    store.record_stream_health(records)
    writes = [s for s in statements if "upstox_stream_health" in s]
    assert len(writes) == 1, writes
    rows = {r["conn_id"]: r for r in store.read_stream_health()}
    assert len(rows) == 1000
    assert rows["upstox_0007"]["state"] == "error"
    assert rows["upstox_0008"]["state"] == "connected"


def test_assess_ranks_worst_first() -> None:
    now = T0 + timedelta(minutes=30)
    base = {"state": "connected", "last_event_at": now - timedelta(seconds=5), "lag_ms": 10.0}
    assert health.assess(base, now) == "ok"
    assert health.assess({**base, "lag_ms": 9000.0}, now) == "lagging"
    assert health.assess({**base, "last_event_at": now - timedelta(minutes=11)}, now) == "stale"
    assert health.assess({**base, "state": "token_wait"}, now) == "token refused"
    assert health.assess({**base, "state": "error"}, now) == "error"
    assert health.assess(None, now) == "no stream"
    stopped_long_ago = {**base, "state": "stopped", "last_event_at": now - timedelta(days=2)}
    assert health.assess(stopped_long_ago, now) == "stopped"
    labels = ["ok", "stopped", "no stream", "error", "stale", "token refused", "lagging"]
    assert sorted(labels, key=health.rank) == list(health.HEALTH_ORDER)


def test_migration_6_adds_the_table_to_a_version_5_store(store: PortfolioStore) -> None:
    with store.engine.begin() as conn:
        schema.stream_health.drop(conn)
        meta = schema.store_meta
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="5"))
    fresh = PortfolioStore(store.engine)
    assert fresh.migrate() == SCHEMA_VERSION == 6
    assert fresh.migrate() == 6
    with store.engine.connect() as conn:
        assert current_version(conn) == 6
        assert sa.inspect(conn).has_table("upstox_stream_health")
    assert _record(fresh, _batch(_order(T0)), T0)["state"] == "connected"


def test_apply_writes_the_health_row_in_the_batch_transaction(store: PortfolioStore) -> None:
    batch = _batch(_order(T0, n=1))
    record = health.from_event("upstox_a", batch, health.TASK, T0)
    result = store.apply(batch.updates, account="AB1234", health_records=[record])
    assert result.inserted == 1
    assert [r["state"] for r in store.read_stream_health()] == ["connected"]
    # one transaction: a health row the database cannot take rolls the batch back with it
    bad = health.from_event("x" * (health.MAX_CONN_ID + 1), batch, health.TASK, T0)
    with pytest.raises(ValueError, match="longer than"):
        store.apply([_order(T0, n=2)], account="AB1234", health_records=[bad])
    assert set(store.read_state("AB1234")["order"]) == {"O-1"}
