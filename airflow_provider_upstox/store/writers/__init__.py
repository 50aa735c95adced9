"""Batch writers: one class per way a batch reaches a database, chosen once when the store opens.

========================  ==============================================  =========================
writer                    databases                                       module
========================  ==============================================  =========================
``PostgresCopyWriter``    PostgreSQL through psycopg 3                    :mod:`.postgres`
``SqliteWriter``          SQLite (the ``sqlite3`` driver)                 :mod:`.sqlite`
``SqlAlchemyWriter``      MySQL/MariaDB, PostgreSQL through psycopg2...   :mod:`.sqlalchemy_core`
========================  ==============================================  =========================

All write the same rows with the same ordering rule in SQL (:mod:`..upsert` builds every
statement); ``tests/store/test_bulk.py`` checks they store identical rows. ``PortfolioStore``
calls them in one fixed order inside one transaction of its
:class:`~..transactions.TransactionPolicy`: orders and their events, the other state tables, the
rejected updates, the progress rows.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from airflow_provider_upstox.store.writers.base import BatchWriter, WriterUnavailable
from airflow_provider_upstox.store.writers.postgres import PostgresCopyWriter
from airflow_provider_upstox.store.writers.sqlalchemy_core import SqlAlchemyWriter
from airflow_provider_upstox.store.writers.sqlite import SqliteWriter

__all__ = [
    "BatchWriter",
    "PostgresCopyWriter",
    "SqlAlchemyWriter",
    "SqliteWriter",
    "WriterUnavailable",
    "writer_for",
]

log = logging.getLogger(__name__)


def writer_for(engine: Engine) -> BatchWriter:
    """The writer for *engine*'s dialect and driver (the fastest each database offers)."""
    dialect = engine.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        return PostgresCopyWriter()
    if dialect.name == "sqlite":
        return SqliteWriter(engine)
    if dialect.name == "postgresql":
        log.warning(
            "Portfolio store on PostgreSQL through %s: batches are written through SQLAlchemy, "
            "several times slower than through psycopg 3's binary COPY; use a "
            "postgresql+psycopg:// URL (psycopg 3, which the Postgres provider installs)",
            dialect.driver,
        )
    return SqlAlchemyWriter()
