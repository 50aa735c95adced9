"""A ``mysql`` Airflow connection works when only PyMySQL is installed (the ``[mysql]`` extra).

``MySqlHook`` names mysqlclient (``mysql://``) unless the connection says ``"client": "pymysql"``;
mysqlclient is a C extension that may be missing (it is installed here, so the test hides it: an
import that fails is the one fault that cannot be produced otherwise). The database is real MariaDB.
"""

from __future__ import annotations

import json
import sys

import pytest

from airflow_provider_upstox.hooks.store import get_portfolio_store
from tests.fixtures.databases import airflow_connection


def _mysql_connection(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_STORE_MY_PURE", json.dumps(airflow_connection(url)))
    return "upstox_store_my_pure"


def test_mysql_connection_without_mysqlclient_uses_pymysql(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = _mysql_connection(mariadb_url, monkeypatch)
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # "import MySQLdb" now raises ImportError
    store = get_portfolio_store(conn_id)
    try:
        assert store.engine.dialect.driver == "pymysql"
        assert store.migrate() >= 4
        store.save_operator_progress("k", {"ok": True})
        assert store.load_operator_progress("k") == {"ok": True}
    finally:
        store.engine.dispose()


def test_mysql_connection_keeps_mysqlclient_when_installed(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("MySQLdb")
    store = get_portfolio_store(_mysql_connection(mariadb_url, monkeypatch))
    try:
        assert store.engine.dialect.driver == "mysqldb"
    finally:
        store.engine.dispose()


def test_other_import_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL connection whose driver is missing still fails with the driver's ImportError."""
    conn = {"conn_type": "postgres", "host": "127.0.0.1", "login": "postgres", "schema": "test"}
    monkeypatch.setenv("AIRFLOW_CONN_UPSTOX_STORE_PG_NODRIVER", json.dumps(conn))
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError):
        get_portfolio_store("upstox_store_pg_nodriver")
