"""The history backfill against the simulator over loopback, into every backend.

The stream "saw" only each order's first step, the snapshot after a reconnect shows the latest one;
the backfill must then record every step of every order's history and every fill of the day,
exactly once, within the rate budget (counted by the simulator).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa
import tenacity

from airflow_provider_upstox.backfill import BackfillResult, run_backfill, unless_token_refused
from airflow_provider_upstox.client import UpstoxClient, UpstoxClientConfig
from airflow_provider_upstox.client.budget import BACKFILL_SHARE, UPSTOX_LIMITS, Limits, RateBudget
from airflow_provider_upstox.exceptions import UpstoxAuthenticationError, UpstoxServerError
from airflow_provider_upstox.models.updates import HISTORY, SNAPSHOT, STREAM, Update, next_seq, now_us
from airflow_provider_upstox.reconciliation import compare_fills, trade_book_days
from airflow_provider_upstox.simulator import RunningSimulator
from airflow_provider_upstox.store import PortfolioStore, history, schema

pytestmark = pytest.mark.simulator(scenario="quiet", seed=7)
ACCOUNT = "AB1234"


@pytest.fixture
def store(db_url: str) -> Iterator[PortfolioStore]:
    s = PortfolioStore.from_url(db_url)
    s.migrate()
    yield s
    s.engine.dispose()


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[UpstoxClient]:
    config = UpstoxClientConfig(base_url=simulator.base_url, access_token=simulator.token, timeout=5)
    with UpstoxClient(config, retry_wait=tenacity.wait_none()) as c:
        yield c


def live(data: dict[str, Any], source: str = STREAM) -> Update:
    return Update(
        update_type="order",
        data=data,
        source=source,
        seq=next_seq(),
        received_at_us=now_us(),
        account=ACCOUNT,
    )


def reconnect_with_gaps(
    simulator: RunningSimulator, store: PortfolioStore, client: UpstoxClient
) -> dict[str, Any]:
    """The stream saw each order's first step only; then the snapshot of a reconnect arrives."""
    simulator.control.step(150)
    truth = simulator.control.state()["orders"]
    store.apply([live(o["history"][0]) for o in truth.values()], account=ACCOUNT)
    snapshot = [live(row, SNAPSHOT) for row in client.get_order_book()]
    queued = store.queue_history_backfill(ACCOUNT, snapshot)
    store.apply(snapshot, account=ACCOUNT)
    assert queued
    assert set(queued) <= set(truth)
    return truth


def stored_states(store: PortfolioStore) -> dict[str, dict[str, str]]:
    ev = schema.order_events
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ev.c.order_id, ev.c.state_id, ev.c.source).where(ev.c.account == ACCOUNT)
        )
        out: dict[str, dict[str, str]] = {}
        for order_id, state_id, source in rows:
            out.setdefault(order_id, {})[state_id] = source
    return out


def true_states(truth: dict[str, Any]) -> dict[str, list[str]]:
    now = datetime.now(timezone.utc)
    return {
        oid: [history.state_id_of(live(step), ACCOUNT, now) or "" for step in o["history"]]
        for oid, o in truth.items()
    }


def test_every_step_and_fill_is_recorded_once_within_the_budget(
    simulator: RunningSimulator, store: PortfolioStore, client: UpstoxClient
) -> None:
    simulator.control.requests(enforce=True)  # a request over Upstox's limits would get a 429
    truth = reconnect_with_gaps(simulator, store, client)
    result = run_backfill(store, client, ACCOUNT, budget=RateBudget(BACKFILL_SHARE))
    assert result.stopped == "done"
    assert result.failed == 0
    assert result.pending == 0
    stored = stored_states(store)
    for order_id, states in true_states(truth).items():
        assert set(stored[order_id]) == set(states), order_id  # every step, nothing else
        assert stored[order_id][states[0]] == STREAM
    assert result.states_added == sum(s == HISTORY for o in stored.values() for s in o.values()) > 0
    # Every fill of the day once, each linked to its order; fills add up to each order's filled quantity.
    t = schema.trades
    with store.engine.connect() as conn:
        fills = {r.trade_id: r for r in conn.execute(sa.select(t.c.trade_id, t.c.order_id, t.c.quantity))}
    day = simulator.control.state()["trades"]
    assert {f["trade_id"]: (f["order_id"], f["quantity"]) for f in day} == {
        k: (r.order_id, r.quantity) for k, r in fills.items()
    }
    stored_orders = store.read_stored_objects(ACCOUNT, "order")
    days = trade_book_days(day)
    assert compare_fills(stored_orders, store.filled_by_fills(ACCOUNT), days=days) == []
    assert any(o["filled_quantity"] for o in stored_orders.values())  # the check had something to check
    # One trade book, one history per queued order, one trades read per order with fills.
    counts = simulator.control.requests()["accounts"][ACCOUNT]
    assert counts["refused"] == 0
    assert counts["total"] == 1 + result.calls  # + the order book read of the snapshot
    for window, limit in (("1s", UPSTOX_LIMITS.per_second), ("60s", UPSTOX_LIMITS.per_minute)):
        assert counts["peaks"][window] <= min(limit, {"1s": 20, "60s": 200}[window]) + 1
    # Replaying the whole backfill changes nothing.
    store.queue_history_backfill(ACCOUNT, [live(r, SNAPSHOT) for r in client.get_order_book()])
    again = run_backfill(store, client, ACCOUNT, budget=RateBudget(BACKFILL_SHARE))
    assert (again.states_added, again.trades_added) == (0, 0)
    assert stored_states(store) == stored


def test_a_backfill_cut_short_by_its_budget_resumes_from_the_database(
    simulator: RunningSimulator, store: PortfolioStore, client: UpstoxClient
) -> None:
    truth = reconnect_with_gaps(simulator, store, client)
    tight = Limits(per_second=4, per_minute=8, per_30_minutes=8)
    first = run_backfill(store, client, ACCOUNT, budget=RateBudget(tight), time_limit=0.5)
    assert first.calls <= 8
    assert first.pending > 0
    assert first.stopped in ("time", "budget")
    assert simulator.control.requests()["accounts"][ACCOUNT]["peaks"]["1s"] <= 4 + 1  # + the order book
    # A new process (worker restart): nothing in memory, the queue in the database goes on.
    rest = run_backfill(store, client, ACCOUNT, budget=RateBudget(BACKFILL_SHARE), trade_book=False)
    assert rest.pending == 0
    assert rest.stopped == "done"
    stored = stored_states(store)
    assert all(set(stored[o]) == set(s) for o, s in true_states(truth).items())


def test_failed_reads_stay_queued_and_are_retried(
    simulator: RunningSimulator, store: PortfolioStore, client: UpstoxClient
) -> None:
    truth = reconnect_with_gaps(simulator, store, client)
    simulator.control.fail_rest(503, count=10_000)
    failed = run_backfill(store, client, ACCOUNT, budget=RateBudget(UPSTOX_LIMITS), trade_book=False)
    assert failed.orders == 0
    assert failed.failed > 0
    assert failed.stopped == "failed"
    assert store.history_backfill_counts(ACCOUNT)["failing"] == failed.failed
    simulator.control.clear_faults()
    healed = run_backfill(store, client, ACCOUNT, budget=RateBudget(UPSTOX_LIMITS))
    assert healed.pending == 0
    assert healed.failed == 0
    stored = stored_states(store)
    assert all(set(stored[o]) == set(s) for o, s in true_states(truth).items())


def test_order_trades_endpoint_shape(simulator: RunningSimulator, client: UpstoxClient) -> None:
    simulator.control.step(150)
    day = client.get_trades()
    order_id = day[0]["order_id"]
    fills = client.get_order_trades(order_id)
    assert fills == [f for f in day if f["order_id"] == order_id]
    assert set(fills[0]) == {
        "exchange", "product", "trading_symbol", "tradingsymbol", "instrument_token", "order_type",
        "transaction_type", "quantity", "exchange_order_id", "order_id", "exchange_timestamp",
        "average_price", "trade_id", "order_ref_id", "order_timestamp",
    }  # fmt: skip
    unfilled = next(
        o for o, v in simulator.control.state()["orders"].items() if not v["final"]["filled_quantity"]
    )
    assert client.get_order_trades(unfilled) == []
    with pytest.raises(Exception, match="UDAPI100010"):
        client.get_order_trades("999")


def test_the_simulator_answers_429_over_upstox_limits(simulator: RunningSimulator) -> None:
    import httpx

    simulator.control.requests(enforce=True, reset=True)
    headers = {"Authorization": f"Bearer {simulator.token}", "Accept": "application/json"}
    with httpx.Client(base_url=simulator.base_url, headers=headers, timeout=10) as http:
        answers = [http.get("/v2/order/trades/get-trades-for-day") for _ in range(70)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused  # 70 requests within a second or so: over 50/s
    assert refused[0].json()["errors"][0]["errorCode"] == "UDAPI10005"
    counts = simulator.control.requests()["accounts"][ACCOUNT]
    assert counts["peaks"]["1s"] <= 50
    assert counts["refused"] == len(refused)


def test_unless_token_refused_keeps_the_refused_fingerprint_and_skips_until_the_token_changes() -> None:
    calls: list[str] = []
    token = {"fingerprint": "aaaa"}

    def backfill() -> BackfillResult:
        calls.append(token["fingerprint"])
        if token["fingerprint"] == "aaaa":
            raise UpstoxAuthenticationError("refused", status_code=401)
        return BackfillResult(orders=1)

    def current() -> str | None:
        return token["fingerprint"]

    result, refused = unless_token_refused(None, current, backfill)
    assert (result, refused, calls) == (None, "aaaa", ["aaaa"])  # refused: its fingerprint is kept
    result, refused = unless_token_refused(refused, current, backfill)
    assert (result, refused, calls) == (None, "aaaa", ["aaaa"])  # same token: no call at all
    token["fingerprint"] = "bbbb"  # a new token in the connection
    result, refused = unless_token_refused(refused, current, backfill)
    assert result is not None
    assert (result.orders, refused, calls) == (1, None, ["aaaa", "bbbb"])


def test_unless_token_refused_raises_every_other_failure() -> None:
    def backfill() -> BackfillResult:
        raise UpstoxServerError("boom", status_code=503)

    with pytest.raises(UpstoxServerError):
        unless_token_refused(None, lambda: "aaaa", backfill)
