"""get_portfolio_store() through real Airflow connections (env-var ``AIRFLOW_CONN_*``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.hooks.store import get_portfolio_store
from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.store import ApplyResult, PortfolioStore, schema
from tests.store.histories import BASE_RECEIVED_US, order_message


def _roundtrip(store: PortfolioStore) -> None:
    try:
        update = Update(update_type="order", data=order_message("1"), seq=1, received_at_us=BASE_RECEIVED_US)
        assert store.apply([update]) == ApplyResult(inserted=1, events=1)
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(schema.orders.c.order_id)).scalars().all() == ["1"]
    finally:
        store.engine.dispose()


def test_sqlite_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "store.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_UPSTOX_STORE_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(db)})
    )
    store = get_portfolio_store("upstox_store_sqlite")
    assert store.engine.dialect.name == "sqlite"
    _roundtrip(store)
    assert db.exists()


def test_postgres_connection(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sa.make_url(postgres_url)
    conn = {
        "conn_type": "postgres",
        "host": url.host,
        "port": url.port or 5432,
        "login": url.username,
        "schema": url.database,
    }
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_STORE_PG", json.dumps(conn))
    store = get_portfolio_store("upstox_store_pg")
    assert store.engine.dialect.name == "postgresql"
    _roundtrip(store)


def test_mariadb_connection(mariadb_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sa.make_url(mariadb_url)
    conn = {
        "conn_type": "mysql",
        "host": url.host,
        "port": url.port or 3306,
        "login": url.username,
        "schema": url.database,
    }
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_STORE_MY", json.dumps(conn))
    store = get_portfolio_store("upstox_store_my")
    assert store.engine.dialect.name in ("mysql", "mariadb")
    _roundtrip(store)


def test_non_sql_connection_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NOT_SQL", json.dumps({"conn_type": "smtp", "host": "example.com"}))
    with pytest.raises(TypeError, match="not a common-sql DbApiHook"):
        get_portfolio_store("not_sql")
    monkeypatch.setenv("AIRFLOW_CONN_NO_HOOK", json.dumps({"conn_type": "nosuchtype", "host": "example.com"}))
    with pytest.raises(TypeError, match="no hook is installed"):
        get_portfolio_store("no_hook")
