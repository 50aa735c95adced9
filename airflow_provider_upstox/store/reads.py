"""Reads for the layers above the store: stored states and Upstox objects, progress rows and
operator progress records (whose small writes live here too, beside their reads).

Callers (the reconciliation operator, the stream and asset-event operators) reach these through
:class:`~airflow_provider_upstox.store.PortfolioStore` methods, never through table names: the
shape of every table belongs to :mod:`.schema` alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_provider_upstox.models.updates import natural_key
from airflow_provider_upstox.store import schema, upsert

#: ``upstox_stream_progress.account`` of operator progress records: a task does not know its Upstox
#: account when it starts, so its records live under this pseudo-account (no Upstox id is "-").
OPERATOR_ACCOUNT: Final = "-"

#: Typed columns that replace the raw JSON field of the same name in :func:`read_stored_objects`:
#: the fields reconciliation compares, as the store's ordering rule maintains them.
OVERLAID_COLUMNS: Final = frozenset(
    {"status", "filled_quantity", "quantity", "day_buy_quantity", "day_sell_quantity"}
)

_stream_key_type = schema.stream_progress.c.stream_key.type
assert isinstance(_stream_key_type, sa.String)
assert _stream_key_type.length
_STREAM_KEY_MAX: Final = _stream_key_type.length
_SHA1_SUFFIX: Final = 41  # "#" + 40 hex digits
#: Keys per ``IN (...)`` list (bounded: some drivers cap a statement's parameters).
_IN_CHUNK: Final = 500


def read_stored_objects(engine: Engine, account: str, update_type: str) -> dict[str, dict[str, Any]]:
    """Stored objects of *account* and *update_type*, keyed like a REST snapshot of that type.

    Each object is the stored raw Upstox JSON, overlaid with the non-null typed columns named in
    :data:`OVERLAID_COLUMNS` (the typed columns are what the ordering rule keeps; the raw JSON is
    the winning message as received). Keys are :func:`~airflow_provider_upstox.models.updates.natural_key`
    of the object, as for snapshot rows.

    :raises ValueError: *update_type* is not a stored type (order, position, holding, gtt_order).
    """
    table = schema.STATE_TABLES.get(update_type)
    if table is None:
        raise ValueError(
            f"no stored objects of type {update_type!r}; use one of {sorted(schema.STATE_TABLES)}"
        )
    overlaid = [column for column in table.c if column.name in OVERLAID_COLUMNS]
    query = sa.select(table.c.raw, *overlaid).where(table.c.account == account).order_by(*table.primary_key)
    result: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query).mappings():
            raw = row["raw"]
            data: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
            data.update((c.name, row[c.name]) for c in overlaid if row[c.name] is not None)
            key = natural_key(update_type, data)
            if key is not None:
                result[key] = data
    return result


def operator_stream_key(key: str) -> str:
    """The ``stream_key`` of operator progress record *key*: *key* itself if it fits the column,
    else a prefix plus the SHA-1 of the whole key (stable and unique; task keys can be long)."""
    if len(key) <= _STREAM_KEY_MAX:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()
    return f"{key[: _STREAM_KEY_MAX - _SHA1_SUFFIX]}#{digest}"


def operator_state(progress_row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON object an operator saved, from its ``upstox_stream_progress`` row (or ``None``)."""
    state = None if progress_row is None else progress_row["state"]
    return dict(state) if isinstance(state, dict) else None


def load_operator_states(engine: Engine, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The saved JSON object of every operator progress record in *keys* that has one, in one query.

    One persist task of the AssetWatcher DAG keeps a watermark per watched asset: with a thousand
    accounts, a query per record would be a thousand round trips at every task start.
    """
    by_stream_key = {operator_stream_key(k): k for k in keys}
    t = schema.stream_progress
    found: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for start in range(0, len(by_stream_key), _IN_CHUNK):
            chunk = list(by_stream_key)[start : start + _IN_CHUNK]
            query = sa.select(t.c.stream_key, t.c.state).where(
                t.c.account == OPERATOR_ACCOUNT, t.c.stream_key.in_(chunk)
            )
            for stream_key, state in conn.execute(query):
                if isinstance(state, dict):
                    found[by_stream_key[stream_key]] = dict(state)
    return found


def save_operator_states(engine: Engine, states: Mapping[str, dict[str, Any]], progress_upsert: Any) -> None:
    """Insert or replace every record of *states* in one transaction (two statements, each executemany).

    :param progress_upsert: :func:`~airflow_provider_upstox.store.upsert.progress_upsert` of the dialect.
    """
    if not states:
        return
    t = schema.stream_progress
    now = datetime.now(timezone.utc)
    rows = [
        {"account": OPERATOR_ACCOUNT, "stream_key": operator_stream_key(k), "batches": 0, "updates": 0,
         "updated_at": now}
        for k in states
    ]  # fmt: skip
    states_rows = [{"k": operator_stream_key(k), "s": v} for k, v in states.items()]
    with engine.begin() as conn:
        conn.execute(progress_upsert, rows)
        conn.execute(
            t.update()
            .where(t.c.account == OPERATOR_ACCOUNT, t.c.stream_key == sa.bindparam("k"))
            .values(state=sa.bindparam("s")),
            states_rows,
        )


def read_state(engine: Engine, account: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Every stored state row of *account* per update type, keyed like ``Update.key`` (see
    ``PortfolioStore.read_state``)."""
    state: dict[str, dict[str, dict[str, Any]]] = {}
    with engine.connect() as conn:
        for update_type, table in schema.STATE_TABLES.items():
            key_cols = schema.KEY_COLUMNS[update_type][1:]  # without "account"
            found: dict[str, dict[str, Any]] = {}
            query = sa.select(table).where(table.c.account == account).order_by(*table.primary_key)
            for mapping in conn.execute(query).mappings():
                row = dict(mapping)
                if isinstance(row.get("version"), memoryview):  # psycopg returns bytea as memoryview
                    row["version"] = bytes(row["version"])
                found[":".join(str(row[c]) for c in key_cols)] = row
            state[update_type] = found
    return state


def progress_row(engine: Engine, account: str, stream_key: str) -> dict[str, Any] | None:
    """The ``upstox_stream_progress`` row of (*account*, *stream_key*) as a dict, or ``None``."""
    t = schema.stream_progress
    with engine.connect() as conn:
        query = sa.select(t).where(t.c.account == account, t.c.stream_key == stream_key)
        row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else None


def save_progress_state(engine: Engine, account: str, stream_key: str, state: dict[str, Any]) -> None:
    """Set the ``state`` (a free-form JSON watermark) of a progress row, creating the row if needed."""
    t = schema.stream_progress
    row = {
        "account": account,
        "stream_key": stream_key,
        "batches": 0,
        "updates": 0,
        "updated_at": datetime.now(timezone.utc),
    }
    with engine.begin() as conn:
        conn.execute(upsert.progress_upsert(conn.dialect.name), [row])
        conn.execute(
            t.update().where(t.c.account == account, t.c.stream_key == stream_key).values(state=state)
        )
