"""Database access shared by the operators: the portfolio store and small JSON progress records.

Progress (stream task counters, asset-event watermarks) lives in the same database as the data it
describes, so that a watermark can never run ahead of the rows it covers on another database. Records
go into the store's ``upstox_stream_progress`` table through its ``get_progress`` /
``set_progress_state`` API, under the pseudo-account :data:`OPERATOR_ACCOUNT` (the account is not
known when a task starts); a store without that API falls back to a tiny key/JSON table of this
package, created on first use.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from typing import Any, Protocol

import sqlalchemy as sa

log = logging.getLogger(__name__)

_metadata = sa.MetaData()
#: Key/JSON progress records of the operators (fallback when the store has no progress API).
operator_progress = sa.Table(
    "upstox_operator_progress",
    _metadata,
    sa.Column("progress_key", sa.String(400), primary_key=True, comment="who: dag/task/run or watermark"),
    sa.Column("value", sa.Text, nullable=False, comment="JSON object"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    comment="Progress of Upstox operators between deferrals, and asset-event watermarks.",
)

#: Account column value of operator progress records in ``upstox_stream_progress``.
OPERATOR_ACCOUNT = "-"
_STREAM_KEY_MAX = 191

_migrated: set[str] = set()
_lock = threading.Lock()


class StoreLike(Protocol):
    """The part of ``PortfolioStore`` the operators use."""

    engine: sa.Engine

    def migrate(self) -> Any: ...

    def apply(self, updates: Any, *, account: str) -> Any: ...


def open_store(sql_conn_id: str) -> Any:
    """The portfolio store of an Airflow SQL connection, migrated once per process."""
    try:
        from airflow_provider_upstox.hooks.store import get_portfolio_store
    except ImportError:  # the store hook module is optional: build the engine from the connection
        store = _store_from_connection(sql_conn_id)
    else:
        store = get_portfolio_store(sql_conn_id)
    engine = store_engine(store)
    url_key = engine.url.render_as_string(hide_password=True)
    with _lock:
        if url_key not in _migrated:
            store.migrate()
            if not hasattr(store, "set_progress_state"):
                _metadata.create_all(engine, checkfirst=True)
            _migrated.add(url_key)
    return store


def store_engine(store: Any) -> sa.Engine:
    """The SQLAlchemy engine behind *store* (``engine`` attribute, or ``_engine`` as a fallback)."""
    engine = getattr(store, "engine", None) or getattr(store, "_engine", None)
    if not isinstance(engine, sa.Engine):
        raise TypeError("the portfolio store exposes no SQLAlchemy engine")
    return engine


def load_progress(store: Any, key: str) -> dict[str, Any] | None:
    """The JSON progress record *key*, or ``None``."""
    if hasattr(store, "set_progress_state"):
        row = store.get_progress(OPERATOR_ACCOUNT, _short(key))
        state = None if row is None else row.get("state")
        if isinstance(state, str):
            state = json.loads(state)
        return dict(state) if isinstance(state, dict) else None
    with store_engine(store).connect() as conn:
        row = conn.execute(
            sa.select(operator_progress.c.value).where(operator_progress.c.progress_key == key)
        ).first()
    return None if row is None else dict(json.loads(row[0]))


def save_progress(store: Any, key: str, value: dict[str, Any]) -> None:
    """Insert or replace the JSON progress record *key* (one short transaction)."""
    if hasattr(store, "set_progress_state"):
        store.set_progress_state(OPERATOR_ACCOUNT, _short(key), value)
        return
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    now = datetime.now(timezone.utc)
    with store_engine(store).begin() as conn:
        updated = conn.execute(
            operator_progress.update()
            .where(operator_progress.c.progress_key == key)
            .values(value=text, updated_at=now)
        ).rowcount
        if not updated:
            conn.execute(operator_progress.insert().values(progress_key=key, value=text, updated_at=now))


def _short(key: str) -> str:
    """*key* if it fits the store's key column, else a prefix plus its SHA-1 (stable, unique)."""
    if len(key) <= _STREAM_KEY_MAX:
        return key
    import hashlib

    digest = hashlib.sha1(key.encode()).hexdigest()
    return f"{key[: _STREAM_KEY_MAX - 41]}#{digest}"


_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}


def _store_from_connection(sql_conn_id: str) -> Any:
    """A ``PortfolioStore`` for an Airflow SQL connection, without a DbApiHook (fallback).

    ``sqlite`` connections name the database file in ``host``; PostgreSQL and MySQL/MariaDB use
    host, port, login, password and schema (the database).
    """
    from airflow.sdk import BaseHook

    from airflow_provider_upstox.store import PortfolioStore

    conn = BaseHook.get_connection(sql_conn_id)
    conn_type = (conn.conn_type or "").lower()
    if conn_type == "sqlite":
        url: str | sa.URL = f"sqlite:///{conn.host}"
    elif conn_type in _SCHEMES:
        url = sa.URL.create(
            _SCHEMES[conn_type],
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        )
    else:
        raise ValueError(f"connection {sql_conn_id!r} has type {conn_type!r}; use sqlite, postgres or mysql")
    return PortfolioStore.from_url(url)
