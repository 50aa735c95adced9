from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_upstox.store import PortfolioStore


@pytest.fixture
def store(db_url: str) -> Iterator[PortfolioStore]:
    """A migrated store on a fresh database of each backend."""
    s = PortfolioStore.from_url(db_url)
    s.migrate()
    yield s
    s.engine.dispose()
