"""Airflow-free SQLAlchemy Core store: schema, migrations, ordered idempotent upserts.

See :class:`PortfolioStore` (the facade), :mod:`.writers` (how a batch reaches each database) and
:mod:`.ordering` (the ordering rule as version bytes).
"""

from airflow_provider_upstox.store.migrations import SchemaVersionError
from airflow_provider_upstox.store.results import ApplyResult
from airflow_provider_upstox.store.rows import STATUS_RANK
from airflow_provider_upstox.store.schema import SCHEMA_VERSION, metadata
from airflow_provider_upstox.store.store import DEFAULT_STREAM_KEY, PortfolioStore

__all__ = [
    "DEFAULT_STREAM_KEY",
    "SCHEMA_VERSION",
    "STATUS_RANK",
    "ApplyResult",
    "PortfolioStore",
    "SchemaVersionError",
    "metadata",
]
