"""The stream operator's history backfill makes no call with a token Upstox refused.

The backfill runs in the worker after each commit, with its own REST client; when the token dies
(03:30 India time) it can see the refusal before the stream's trigger does. It then keeps the
refused token's fingerprint in its progress record and stays silent until the connection holds
another token: every extra call with a dead token is wasted, and, repeated by every stream of a
deployment, looks like abuse to Upstox. The simulator over loopback counts the refused requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_upstox.models.updates import SNAPSHOT, Update, encode_updates, next_seq, now_us
from airflow_provider_upstox.operators.portfolio_stream import UpstoxPortfolioStreamOperator

pytestmark = pytest.mark.simulator(scenario="quiet")


def _snapshot_batch(account: str) -> dict[str, Any]:
    """A batch event holding one snapshot row: a reconnect, after which the trade book is read."""
    data = {
        "update_type": "order",
        "order_id": "250106000000001",
        "user_id": account,
        "status": "open",
        "order_request_id": "1",
        "exchange_timestamp": "2025-01-06 09:15:00",
        "filled_quantity": 0,
        "quantity": 1,
    }
    update = Update(
        update_type="order",
        data=data,
        source=SNAPSHOT,
        seq=next_seq(),
        received_at_us=now_us(),
        account=account,
    )
    return {"status": "batch", "account": account, "updates": encode_updates([update]), "stats": {}}


def _resume(operator: UpstoxPortfolioStreamOperator, context: dict[str, Any], event: dict[str, Any]) -> None:
    with pytest.raises(TaskDeferred):  # the stream goes on: the task defers again
        operator.execute_complete(context, event)


def _use_token(monkeypatch: pytest.MonkeyPatch, simulator: Any, token: str) -> None:
    upstox = {"conn_type": "upstox", "password": token, "host": simulator.base_url}
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_SIM", json.dumps(upstox))


def test_no_backfill_call_with_a_refused_token_until_the_connection_changes(
    simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = {"conn_type": "sqlite", "host": str(tmp_path / "store.db")}
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_BACKFILL_DB", json.dumps(db))
    _use_token(monkeypatch, simulator, simulator.token)
    operator = UpstoxPortfolioStreamOperator(
        task_id="stream", upstox_conn_id="upstox_sim", sql_conn_id="upstox_backfill_db", emit_assets=False
    )
    context = {
        "ti": SimpleNamespace(dag_id="d", task_id="stream", run_id="run-1", map_index=-1),
        "outlet_events": {},
    }
    with pytest.raises(TaskDeferred):
        operator.execute(context)
    account = "AB1234"  # the simulator's account

    refused = lambda: simulator.control.counters()["unauthorized"]  # noqa: E731
    _resume(operator, context, _snapshot_batch(account))
    assert refused() == 0  # a valid token: the trade book is read

    simulator.control.expire_token()
    _resume(operator, context, _snapshot_batch(account))
    after_first = refused()
    assert after_first >= 1  # the backfill saw the refusal (before the stream did)
    _resume(operator, context, _snapshot_batch(account))
    _resume(operator, context, _snapshot_batch(account))
    assert refused() == after_first  # and then made no call with that token

    _use_token(monkeypatch, simulator, "another-token-" + "x" * 24)  # someone pasted a new token
    _resume(operator, context, _snapshot_batch(account))
    assert refused() > after_first  # a different token: the backfill calls again


def test_events_dag_backfill_task_makes_no_call_with_a_refused_token(
    simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events DAG's ``backfill_history`` task: a refused token pauses that account's backfill
    (the task succeeds, the queue waits) with no further call until the connection's token changes;
    a valid new token clears the record and the backfill reads again."""
    from airflow_provider_upstox.operators._db import open_store
    from airflow_provider_upstox.operators.history_backfill import (
        UpstoxHistoryBackfillOperator,
        refused_token_key,
    )
    from tests.reliability.matrix import new_token_via_oauth

    db = {"conn_type": "sqlite", "host": str(tmp_path / "store.db")}
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_BACKFILL_DB", json.dumps(db))
    _use_token(monkeypatch, simulator, simulator.token)
    operator = UpstoxHistoryBackfillOperator(
        task_id="backfill_history", upstox_conn_id="upstox_sim", sql_conn_id="upstox_backfill_db"
    )
    refused = lambda: simulator.control.counters()["unauthorized"]  # noqa: E731
    assert operator.execute({})["trade_book_read"]
    assert refused() == 0

    simulator.control.expire_token()
    assert operator.execute({}) == {"token_refused": True, "trade_book_read": False}
    after_first = refused()
    assert after_first == 1  # one call found out (the profile read)
    operator.execute({})
    operator.execute({})
    assert refused() == after_first  # and then none with that token
    stored = open_store("upstox_backfill_db").load_operator_progress(refused_token_key("upstox_sim"))
    assert stored is not None
    assert simulator.token not in json.dumps(stored)

    _use_token(monkeypatch, simulator, new_token_via_oauth(simulator.base_url))
    result = operator.execute({})
    assert result["trade_book_read"]
    assert "token_refused" not in result
    assert refused() == after_first
    assert open_store("upstox_backfill_db").load_operator_progress(refused_token_key("upstox_sim")) == {}
