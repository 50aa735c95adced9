"""Airflow glue for the portfolio store: an Airflow SQL connection id -> :class:`PortfolioStore`.

The engine comes from the connection's own common-sql hook (``PostgresHook``, ``MySqlHook``,
``SqliteHook``...): ``DbApiHook.get_sqlalchemy_engine()``, so whatever URL, driver and extras the
user configured for that connection type are honoured, and this provider never parses connection
fields itself. The store stays Airflow-free; only this module imports Airflow.

One exception, so that MySQL/MariaDB needs no compiler: a ``mysql`` (or ``mariadb``) connection
whose hook is not installed (the ``[mysql]`` extra is PyMySQL alone; Airflow's MySQL provider needs
the C ``mysqlclient`` on Linux), or whose hook asks for ``mysqlclient`` where it is not installed,
is opened with PyMySQL (``mysql+pymysql://``) from the connection's host, port, login, password,
schema and ``charset`` extra.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from airflow_provider_upstox.store import PortfolioStore
from airflow_provider_upstox.store.store import json_dumps

log = logging.getLogger(__name__)


def get_db_hook(sql_conn_id: str) -> DbApiHook:
    """The common-sql hook of the Airflow connection *sql_conn_id*.

    :raises TypeError: the connection's type has no installed hook, or one that is not a SQL
        (``DbApiHook``) hook, e.g. an SMTP connection.
    """
    connection = BaseHook.get_connection(sql_conn_id)
    try:
        hook = connection.get_hook()
    except AirflowException as exc:  # no provider installed for this connection type
        raise TypeError(
            f"connection {sql_conn_id!r} has type {connection.conn_type!r}, for which no hook is installed "
            "(install apache-airflow-providers-postgres, -mysql or -sqlite)"
        ) from exc
    if not isinstance(hook, DbApiHook):
        raise TypeError(
            f"connection {sql_conn_id!r} is of a type whose hook ({type(hook).__name__}) is not a "
            "common-sql DbApiHook; use a PostgreSQL, MySQL/MariaDB or SQLite connection"
        )
    return hook


def get_portfolio_store(sql_conn_id: str, engine_kwargs: dict[str, Any] | None = None) -> PortfolioStore:
    """A :class:`PortfolioStore` on the database of the Airflow connection *sql_conn_id*.

    :param sql_conn_id: an Airflow connection of a SQL type (``postgres``, ``mysql``, ``sqlite``...).
    :param engine_kwargs: extra :func:`sqlalchemy.create_engine` arguments.
    """
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": json_dumps}
    kwargs.update(engine_kwargs or {})
    try:
        engine = get_db_hook(sql_conn_id).get_sqlalchemy_engine(engine_kwargs=kwargs)
    except (TypeError, ModuleNotFoundError) as exc:
        engine = _pymysql_engine(sql_conn_id, kwargs, exc)
    log.debug("Portfolio store on connection %s (%s)", sql_conn_id, engine.dialect.name)
    return PortfolioStore(engine)


def _pymysql_engine(sql_conn_id: str, engine_kwargs: dict[str, Any], cause: Exception) -> sa.Engine:
    """A PyMySQL engine for a MySQL/MariaDB connection *cause* kept from its own hook; else re-raise."""
    connection = BaseHook.get_connection(sql_conn_id)
    no_mysqlclient = isinstance(cause, ModuleNotFoundError) and cause.name == "MySQLdb"
    if (connection.conn_type or "").lower() not in ("mysql", "mariadb") or not (
        no_mysqlclient or isinstance(cause, TypeError)
    ):
        raise cause
    url = sa.URL.create(
        "mysql+pymysql",
        username=connection.login or None,
        password=connection.password or None,
        host=connection.host or "localhost",
        port=int(connection.port) if connection.port else None,
        database=connection.schema or None,
        query={"charset": str(connection.extra_dejson.get("charset") or "utf8mb4")},
    )
    log.info("Connection %s: opening MySQL/MariaDB with PyMySQL (%s)", sql_conn_id, type(cause).__name__)
    return sa.create_engine(url, **engine_kwargs)
