"""Deprecated: the comparison moved to :mod:`airflow_provider_upstox.reconciliation`.

The comparison is plain Python with no Airflow in it, so it no longer lives among the operators;
its two tables are now part of the store's schema (``store/schema/``) and are written through
:class:`~airflow_provider_upstox.store.PortfolioStore` (``start_reconciliation_run``,
``finish_reconciliation_run``, which replace ``create_tables``/``start_run``/``finish_run``). This
module only re-exports the comparison and the two tables; import them from
:mod:`airflow_provider_upstox.reconciliation` and :mod:`airflow_provider_upstox.store.schema`.
"""

from __future__ import annotations

from airflow_provider_upstox.reconciliation import (
    COMPARED_FIELDS,
    EXTRA,
    MISMATCH,
    MISSING,
    Discrepancy,
    comparable,
    compare,
    index_rows,
)
from airflow_provider_upstox.store.schema import reconciliation_discrepancies, reconciliation_runs

__all__ = [
    "COMPARED_FIELDS",
    "EXTRA",
    "MISMATCH",
    "MISSING",
    "Discrepancy",
    "comparable",
    "compare",
    "index_rows",
    "reconciliation_discrepancies",
    "reconciliation_runs",
]
