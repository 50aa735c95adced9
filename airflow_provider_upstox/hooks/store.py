"""Airflow glue for the portfolio store: an Airflow SQL connection id -> :class:`PortfolioStore`.

The engine comes from the connection's own common-sql hook (``PostgresHook``, ``MySqlHook``,
``SqliteHook``...): ``DbApiHook.get_sqlalchemy_engine()``, so whatever URL, driver and extras the
user configured for that connection type are honoured, and this provider never parses connection
fields itself. The store stays Airflow-free; only this module imports Airflow.

One exception, so that MySQL/MariaDB needs no compiler: a ``mysql`` (or ``mariadb``) connection
is opened with PyMySQL when its hook asks for a ``mysqlclient`` that is not installed (the hook's
URL, driver swapped), or when Airflow's MySQL provider is not installed at all (the ``[mysql]`` extra
is PyMySQL alone; the URL is built from the connection's fields).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import sqlalchemy as sa
from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from airflow_provider_upstox.store import PortfolioStore
from airflow_provider_upstox.store.rows import json_dumps

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
        hook = get_db_hook(sql_conn_id)
    except TypeError:
        engine = _pymysql_engine_without_hook(sql_conn_id, kwargs)
        if engine is None:
            raise
    else:
        try:
            engine = hook.get_sqlalchemy_engine(engine_kwargs=kwargs)
        except ImportError:
            url = _pymysql_instead_of_mysqlclient(hook)
            if url is None:
                raise
            log.info("Connection %s: mysqlclient is not installed, using PyMySQL", sql_conn_id)
            engine = sa.create_engine(url, **kwargs)
    log.debug("Portfolio store on connection %s (%s)", sql_conn_id, engine.dialect.name)
    return PortfolioStore(engine)


def _pymysql_engine_without_hook(sql_conn_id: str, engine_kwargs: dict[str, Any]) -> sa.Engine | None:
    """A PyMySQL engine for a ``mysql``/``mariadb`` connection whose provider is not installed.

    The ``[mysql]`` extra is PyMySQL alone (Airflow's MySQL provider needs the C ``mysqlclient`` on
    Linux): the URL is built from the connection's host, port, login, password, schema and
    ``charset`` extra. ``None`` for any other connection type (the caller keeps its error).
    """
    connection = BaseHook.get_connection(sql_conn_id)
    if (connection.conn_type or "").lower() not in ("mysql", "mariadb"):
        return None
    if importlib.util.find_spec("pymysql") is None:
        return None
    url = sa.URL.create(
        "mysql+pymysql",
        username=connection.login or None,
        password=connection.password or None,
        host=connection.host or "localhost",
        port=int(connection.port) if connection.port else None,
        database=connection.schema or None,
        query={"charset": str(connection.extra_dejson.get("charset") or "utf8mb4")},
    )
    log.info("Connection %s: no MySQL provider installed, using PyMySQL", sql_conn_id)
    return sa.create_engine(url, **engine_kwargs)


def _pymysql_instead_of_mysqlclient(hook: DbApiHook) -> sa.URL | None:
    """The hook's URL with the PyMySQL driver, if it names mysqlclient and only PyMySQL is installed.

    ``MySqlHook`` builds ``mysql://`` (mysqlclient) unless the connection's extra says
    ``"client": "pymysql"``; the provider's ``[mysql]`` extra installs PyMySQL, and mysqlclient (a C
    extension needing the MySQL client library) may be missing, e.g. on macOS.
    """
    url = sa.make_url(hook.get_uri())
    if url.drivername not in ("mysql", "mariadb") or importlib.util.find_spec("pymysql") is None:
        return None
    return url.set(drivername=f"{url.drivername}+pymysql")
