"""Reading the store back in a backend-neutral shape for comparisons."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from airflow_provider_upstox.store import PortfolioStore, schema

#: Columns that depend on arrival order or wall clock, not on the state itself.
VOLATILE = frozenset({"account", "revision", "write_id", "first_seen_at", "updated_at"})


def state_rows(store: PortfolioStore, table: sa.Table, account: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows of *account* in *table* keyed by natural key, without the volatile columns."""
    keys = [c.name for c in table.primary_key.columns if c.name != "account"]
    with store.engine.connect() as conn:
        result = conn.execute(sa.select(table).where(table.c.account == account)).mappings().all()
    return {
        tuple(r[k] for k in keys): {k: _norm(v) for k, v in r.items() if k not in VOLATILE} for r in result
    }


def event_keys(store: PortfolioStore, account: str) -> set[tuple[str, str, str, int | None, str | None]]:
    t = schema.order_events
    with store.engine.connect() as conn:
        result = conn.execute(
            sa.select(
                t.c.order_id, t.c.state_id, t.c.status, t.c.filled_quantity, t.c.order_request_id
            ).where(t.c.account == account)
        )
        return {tuple(r) for r in result}  # type: ignore[misc]


def rejected(store: PortfolioStore) -> list[dict[str, Any]]:
    t = schema.rejected_updates
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.id)).mappings()]


def _norm(value: Any) -> Any:
    # JSON columns come back as dicts everywhere; bytes may come back as memoryview (psycopg).
    if isinstance(value, memoryview):
        return bytes(value)
    return value
