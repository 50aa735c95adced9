"""``UpstoxReconcileOperator`` end to end through its public parts, without a scheduler.

The hook reads REST snapshots from the simulator over loopback HTTP; the store is a real SQLite,
PostgreSQL or MariaDB database reached through an Airflow SQL connection (common-sql hook). The
run log is read back from the store's tables.
"""

from __future__ import annotations

import json
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import INDIA_TZ, Update, next_seq, now_us
from airflow_provider_upstox.operators.reconcile import UpstoxReconcileOperator, UpstoxReconciliationError
from airflow_provider_upstox.store import PortfolioStore, schema
from tests.fixtures.databases import airflow_connection

pytestmark = pytest.mark.simulator(scenario="quiet", seed=4)


@pytest.fixture
def reconcile(simulator: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``reconcile(**operator_kwargs) -> summary``: one operator run, as the scheduler would start it."""
    upstox = {"conn_type": "upstox", "password": simulator.token, "host": simulator.base_url}
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_SIM", json.dumps(upstox))
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_STORE", json.dumps(airflow_connection(db_url)))
    runs = iter(range(1, 100))

    def run(**kwargs: Any) -> dict[str, Any]:
        operator = UpstoxReconcileOperator(
            task_id="reconcile", upstox_conn_id="upstox_sim", sql_conn_id="upstox_store", **kwargs
        )
        ti = SimpleNamespace(dag_id="upstox_reconcile", run_id=f"manual__{next(runs)}")
        return operator.execute({"ti": ti})  # type: ignore[arg-type]

    return run


@pytest.fixture
def store(db_url: str) -> Any:
    s = PortfolioStore.from_url(db_url)
    yield s
    s.engine.dispose()


def _log(store: PortfolioStore) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runs, found = schema.reconciliation_runs, schema.reconciliation_discrepancies
    with store.engine.connect() as conn:
        return (
            [dict(r) for r in conn.execute(sa.select(runs).order_by(runs.c.run_id)).mappings()],
            [dict(r) for r in conn.execute(sa.select(found).order_by(found.c.id)).mappings()],
        )


def test_missing_then_repaired_then_clean(simulator: Any, reconcile: Any, store: PortfolioStore) -> None:
    simulator.control.step(30)
    state = simulator.control.state()
    account = state["user_id"]
    expected_keys = len(state["orders"]) + len(state["holdings"]) + len(state["gtt_orders"])
    assert len(state["orders"]) >= 3

    # 1. An empty store: everything the snapshots list is missing, and "fail" fails.
    with pytest.raises(UpstoxReconciliationError, match="discrepancies between the store and Upstox"):
        reconcile(on_discrepancy="fail")
    (run,), found = _log(store)
    assert (run["status"], run["account"], run["dag_id"], run["dag_run_id"]) == (
        "discrepancies",
        account,
        "upstox_reconcile",
        "manual__1",
    )
    assert run["update_types"] == "order,position,holding,gtt_order"
    assert {f["kind"] for f in found} == {"missing"}
    assert run["discrepancies"] == len(found) >= expected_keys
    assert not any(f["repaired"] for f in found)
    assert store.read_stored_objects(account, "order") == {}

    # 2. Repair applies the snapshot rows through the store; nothing remains, so "fail" passes.
    repaired = reconcile(repair=True, on_discrepancy="fail")
    assert (repaired["status"], repaired["remaining"]) == ("repaired", 0)
    assert repaired["repaired"] == repaired["discrepancies"] == len(found)
    assert set(store.read_stored_objects(account, "order")) == set(state["orders"])

    # 3. The store now agrees with Upstox.
    clean = reconcile()
    assert (clean["status"], clean["discrepancies"]) == ("clean", 0)
    assert clean["compared"] == repaired["compared"] >= expected_keys
    runs, found_after = _log(store)
    assert [r["status"] for r in runs] == ["discrepancies", "repaired", "clean"]
    assert all(r["finished_at"] is not None for r in runs)
    assert [f["repaired"] for f in found_after[len(found) :]] == [True] * len(found)


def test_an_order_only_the_store_knows_is_extra_and_cannot_be_repaired(
    simulator: Any, reconcile: Any, store: PortfolioStore
) -> None:
    simulator.control.step(10)
    account = simulator.control.state()["user_id"]
    reconcile(repair=True, on_discrepancy="ignore")
    today = datetime.now(INDIA_TZ).strftime("%Y-%m-%d")
    ghost = {
        "order_id": "GHOST-1",
        "status": "open",
        "quantity": 1,
        "filled_quantity": 0,
        "order_timestamp": f"{today} 10:00:00",
        "user_id": account,
    }
    update = Update(update_type="order", data=ghost, seq=next_seq(), received_at_us=now_us(), account=account)
    store.apply([update], account=account)

    summary = reconcile(repair=True, on_discrepancy="warn")
    assert (summary["status"], summary["remaining"], summary["by_kind"]) == (
        "discrepancies",
        1,
        {"order:extra": 1},
    )
    _, found = _log(store)
    last = found[-1]
    assert (last["natural_key"], last["kind"], last["repaired"]) == ("GHOST-1", "extra", False)
    assert json.loads(last["db_value"])["status"] == "open"


@pytest.mark.simulator(scenario="quiet", seed=7)
def test_filled_quantities_are_checked_against_the_fills(
    simulator: Any, reconcile: Any, store: PortfolioStore
) -> None:
    """The store saw each order's first step only: every order with fills lags its fills."""
    simulator.control.step(150)
    state = simulator.control.state()
    account = state["user_id"]
    filled = {oid for oid, o in state["orders"].items() if o["final"]["filled_quantity"]}
    assert filled
    first_steps = [
        Update(
            update_type="order",
            data=o["history"][0],
            seq=next_seq(),
            received_at_us=now_us(),
            account=account,
        )
        for o in state["orders"].values()
    ]
    store.apply(first_steps, account=account)
    in_scope = filled  # the simulated day is the trade book's day
    summary = reconcile(update_types="order", on_discrepancy="ignore")
    _, found = _log(store)
    lagging = {f["natural_key"] for f in found if f["kind"] == "fills_mismatch"}
    assert lagging == in_scope
    assert summary["by_kind"].get("trade:fills_mismatch", 0) == len(in_scope)
    # The trade book was recorded as it was read: every fill of the day, once.
    assert sum(store.filled_by_fills(account).values()) == sum(t["quantity"] for t in state["trades"])

    reconcile(update_types="order", repair=True, on_discrepancy="ignore")  # the orders catch up
    assert reconcile(update_types="order")["status"] == "clean"
