"""Property: the final store state depends only on the set of observed states, not on arrival order.

Any permutation, with duplicates and arbitrary batch splits, of a realistic order history with
interleaved snapshots gives the same final rows and the same set of events as applying it in true
order once, and the final row is the order's true last state.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import PortfolioStore, schema
from tests.store.helpers import event_keys, state_rows
from tests.store.histories import timeline

_accounts = itertools.count()


@st.composite
def scrambled(draw: st.DrawFn) -> tuple[list[Update], list[list[Update]], dict[str, dict[str, Any]]]:
    updates, finals = draw(timeline())
    order = draw(st.permutations(range(len(updates))))
    extra = draw(st.lists(st.integers(0, len(updates) - 1), max_size=len(updates)))
    shuffled = [updates[i] for i in order]
    for i in extra:  # duplicates anywhere
        shuffled.insert(draw(st.integers(0, len(shuffled))), updates[i])
    batches: list[list[Update]] = []
    while shuffled:
        size = draw(st.integers(1, max(1, len(shuffled))))
        batches.append(shuffled[:size])
        shuffled = shuffled[size:]
    return updates, batches, finals


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scrambled())
def test_any_arrival_order_gives_the_true_order_result(store: PortfolioStore, case: Any) -> None:
    true_order, batches, finals = case
    n = next(_accounts)
    reference, scrambled_account = f"REF{n}", f"PERM{n}"
    for update in true_order:
        store.apply([update], account=reference)
    for batch in batches:
        store.apply(batch, account=scrambled_account)

    expected = state_rows(store, schema.orders, reference)
    assert state_rows(store, schema.orders, scrambled_account) == expected
    assert event_keys(store, scrambled_account) == event_keys(store, reference)
    assert len(event_keys(store, reference)) == len(
        {
            (
                u.data["order_id"],
                u.data["status"],
                u.data["filled_quantity"],
                u.data["order_request_id"],
                u.data["exchange_timestamp"],
            )
            for u in true_order
        }
    )
    for (order_id,), row in expected.items():
        assert row["raw"] == finals[order_id], f"order {order_id} did not end in its true last state"
