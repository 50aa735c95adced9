"""The stream operator tells each re-deferral's trigger what it has committed (``acked_seq``).

Bug 2 of the reliability matrix: a trigger that takes a parked stream over re-emits the last batch
it yielded unless ``acked_seq`` covers it, so the operator must pass ``0`` on a fresh try and the
highest committed seq after each commit, read back from its progress record in the database.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_upstox.models.events import ErrorEvent, ErrorKind, InvalidEventError, encode_event
from airflow_provider_upstox.models.updates import Update, encode_updates, next_seq, now_us
from airflow_provider_upstox.operators.portfolio_stream import (
    UpstoxPortfolioStreamFatalError,
    UpstoxPortfolioStreamOperator,
)


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UpstoxPortfolioStreamOperator:
    db = tmp_path / "store.db"
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_ACK_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    return UpstoxPortfolioStreamOperator(
        task_id="stream", sql_conn_id="upstox_ack_db", emit_assets=False, max_batch_wait=0.2
    )


def _context(run_id: str) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="d", task_id="stream", run_id=run_id, map_index=-1)
    return {"ti": ti, "outlet_events": {}}


def _order(order_id: str, status: str) -> Update:
    data = {
        "update_type": "order",
        "order_id": order_id,
        "user_id": "AB1234",
        "status": status,
        "order_request_id": "1",
        "exchange_timestamp": "2025-01-06 09:15:00",
        "filled_quantity": 0,
        "quantity": 1,
    }
    return Update(update_type="order", data=data, seq=next_seq(), received_at_us=now_us(), account="AB1234")


def _deferred_trigger(call: Any) -> Any:
    with pytest.raises(TaskDeferred) as deferred:
        call()
    return deferred.value.trigger


def test_fresh_try_acks_nothing_and_each_commit_raises_acked_seq(
    operator: UpstoxPortfolioStreamOperator,
) -> None:
    context = _context("run-1")
    first = _deferred_trigger(lambda: operator.execute(context))
    assert first.acked_seq == 0  # a fresh try: re-send whatever the parked stream did not get committed
    assert json.loads(json.dumps(first.serialize()[1]))["acked_seq"] == 0

    batch = [_order("250106000000001", "open"), _order("250106000000002", "open")]
    event = {"status": "batch", "account": "AB1234", "updates": encode_updates(batch), "stats": {}}
    second = _deferred_trigger(lambda: operator.execute_complete(context, event))
    assert second.acked_seq == max(u.seq for u in batch)

    idle = {"status": "idle", "account": "AB1234", "idle_since_us": now_us(), "stats": {}}
    third = _deferred_trigger(lambda: operator.execute_complete(context, idle))
    assert third.acked_seq == second.acked_seq  # nothing new committed: the watermark stays

    retry = _deferred_trigger(lambda: operator.execute(context))  # the try died: a new try
    assert retry.acked_seq == 0


def test_error_events_fail_only_when_their_kind_is_fatal(operator: UpstoxPortfolioStreamOperator) -> None:
    context = _context("run-errors")
    _deferred_trigger(lambda: operator.execute(context))
    transient = encode_event(
        ErrorEvent(kind=ErrorKind.TRANSPORT, exception="UpstoxTransportError", message="timed out")
    )
    _deferred_trigger(lambda: operator.execute_complete(context, transient))  # re-defers
    refused = encode_event(
        ErrorEvent(kind=ErrorKind.AUTHENTICATION, exception="UpstoxAuthenticationError", message="refused")
    )
    with pytest.raises(UpstoxPortfolioStreamFatalError, match="authentication"):
        operator.execute_complete(context, refused)
    # The shape an earlier version sent (with its own ``fatal`` flag) means the same.
    old = {"status": "error", "error_type": "configuration", "exception": "AirflowNotFoundException",
           "message": "conn not found", "fatal": True, "account": None}  # fmt: skip
    with pytest.raises(UpstoxPortfolioStreamFatalError, match="conn not found"):
        operator.execute_complete(context, old)


def test_a_foreign_event_is_refused_by_name(operator: UpstoxPortfolioStreamOperator) -> None:
    context = _context("run-foreign")
    _deferred_trigger(lambda: operator.execute(context))
    with pytest.raises(InvalidEventError, match="not an Upstox portfolio stream event"):
        operator.execute_complete(context, {"status": "success", "rows": 3})


def test_each_wake_up_records_the_stream_health(operator: UpstoxPortfolioStreamOperator) -> None:
    """After the batch's commit: connected; a fatal error is recorded before it fails the task."""
    from airflow_provider_upstox.hooks.store import get_portfolio_store

    operator.upstox_conn_id = "upstox_health"
    context = _context("run-health")
    _deferred_trigger(lambda: operator.execute(context))
    batch = [_order("250106000000003", "open")]
    stats = {"connection": 2, "reconnects": 1, "messages": 9, "lag_ms": 40.0}
    event = {"status": "batch", "account": "AB1234", "updates": encode_updates(batch), "stats": stats}
    _deferred_trigger(lambda: operator.execute_complete(context, event))
    store = get_portfolio_store("upstox_ack_db")
    (row,) = store.read_stream_health()
    assert (row["conn_id"], row["state"], row["consumer"], row["account"]) == (
        "upstox_health", "connected", "task", "AB1234",
    )  # fmt: skip
    assert (row["reconnects"], row["lag_ms"], row["connection_epoch"]) == (1, 40.0, 2)
    refused = encode_event(
        ErrorEvent(kind=ErrorKind.CONFIGURATION, exception="E", message="conn not found", account="AB1234")
    )
    with pytest.raises(UpstoxPortfolioStreamFatalError):
        operator.execute_complete(context, refused)
    (row,) = store.read_stream_health()
    assert (row["state"], row["error_kind"], row["reconnects"]) == ("error", "configuration", 1)


def test_a_stop_rule_records_a_stopped_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After market hours a stopped stream is *stopped*, not *stale*, however long ago it stopped."""
    from airflow_provider_upstox.hooks.store import get_portfolio_store
    from airflow_provider_upstox.store import health

    db = tmp_path / "stop.db"
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_STOP_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    operator = UpstoxPortfolioStreamOperator(
        task_id="stream", upstox_conn_id="upstox_stop", sql_conn_id="upstox_stop_db", emit_assets=False,
        max_batches=1, backfill_history=False,
    )  # fmt: skip
    context = _context("run-stop")
    _deferred_trigger(lambda: operator.execute(context))
    batch = [_order("250106000000004", "open")]
    event = {"status": "batch", "account": "AB1234", "updates": encode_updates(batch), "stats": {}}
    assert operator.execute_complete(context, event)["reason"] == "max_batches=1 reached"
    (row,) = get_portfolio_store("upstox_stop_db").read_stream_health()
    assert (row["state"], row["account"]) == ("stopped", "AB1234")
    assert health.assess(row, row["last_event_at"] + timedelta(days=1)) == "stopped"
