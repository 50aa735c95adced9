from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_upstox.store import PortfolioStore


def _migrated_store(url: str) -> Iterator[PortfolioStore]:
    s = PortfolioStore.from_url(url)
    s.migrate()
    yield s
    s.engine.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[PortfolioStore]:
    """A migrated store on a fresh database of each backend."""
    yield from _migrated_store(db_url)


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[PortfolioStore]:
    """A migrated store on a fresh PostgreSQL database (psycopg 3)."""
    yield from _migrated_store(postgres_url)
