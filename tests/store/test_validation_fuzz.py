"""Fuzz on every backend: no content of an update, envelope included, can fail its batch.

Unlike ``tests/fuzz/test_store_fuzz.py`` (SQLite and PostgreSQL, NUL-free text), this draws any
code point (NUL and lone surrogates included), huge integers, and mutates the envelope (seq,
connection_epoch, received_at_us, source, account) too, on SQLite, PostgreSQL and MariaDB. Oracle:
``apply()`` never raises, every update is either stored or recorded as rejected, and the good
update of the batch is always stored.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import PortfolioStore, schema
from tests.store.histories import BASE_RECEIVED_US, order_message
from tests.store.test_store import GTT, HOLDING, POSITION

pytestmark = pytest.mark.timeout(300)

_n = itertools.count()
SAMPLES: dict[str, dict[str, Any]] = {
    "order": order_message("240221000000001"),
    "position": POSITION,
    "holding": HOLDING,
    "gtt_order": GTT,
}
any_text = st.text(st.characters(codec=None), max_size=12) | st.sampled_from(["\x00", "a\x00", "\ud800"])
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(),
    any_text,
    st.text(min_size=60, max_size=300),
    st.sampled_from(["0001-01-01 00:00:00", "9999-12-31 23:59:59", "2024-02-21 14:40:02", "\u00b2"]),
    st.lists(any_text, max_size=2),
    st.dictionaries(any_text, any_text, max_size=2),
)


@st.composite
def bad_update(draw: st.DrawFn) -> Update:
    kind = draw(st.sampled_from(sorted(SAMPLES)))
    data = copy.deepcopy(SAMPLES[kind])
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            data[draw(st.sampled_from(sorted(data)))] = draw(values)
        else:
            data[draw(any_text)] = draw(values)
    envelope: dict[str, Any] = {"seq": 1, "received_at_us": BASE_RECEIVED_US, "source": "stream"}
    if draw(st.integers(0, 3)) == 0:
        field = draw(st.sampled_from(["seq", "received_at_us", "connection_epoch", "source", "account"]))
        envelope[field] = draw(any_text if field in ("source", "account") else st.integers(-(2**65), 2**65))
    return Update(update_type=kind, data=data, **envelope)


def _count(store: PortfolioStore, table: sa.Table, account: str) -> int:
    with store.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.account == account)
        return int(conn.execute(query).scalar_one())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bad=bad_update())
def test_no_update_content_fails_its_batch(store: PortfolioStore, bad: Update) -> None:
    account = f"VF{next(_n)}"
    good = Update(
        update_type="order", data=order_message("240221999999999"), seq=2, received_at_us=BASE_RECEIVED_US
    )
    result = store.apply([bad, good], account=account)  # must not raise
    assert result.total == 2
    assert result.rejected in (0, 1)
    assert _count(store, schema.orders, account) >= 1, "the good update of the batch was lost"
    stored_account = bad.account or account
    if result.rejected == 0:
        assert _count(store, schema.STATE_TABLES[bad.update_type], stored_account) >= 1
