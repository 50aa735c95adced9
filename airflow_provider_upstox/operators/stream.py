"""Deprecated module name: use :mod:`airflow_provider_upstox.operators.portfolio_stream`.

Kept so DAGs written against earlier versions still import; "stream" alone now means the Upstox
Portfolio Stream Feed and its WebSocket client, not this operator.
"""

from airflow_provider_upstox.operators.portfolio_stream import (
    MIN_IDLE_TIMEOUT,
    UpstoxPortfolioStreamFatalError,
    UpstoxPortfolioStreamOperator,
)

__all__ = ["MIN_IDLE_TIMEOUT", "UpstoxPortfolioStreamFatalError", "UpstoxPortfolioStreamOperator"]
