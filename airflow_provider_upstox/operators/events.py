"""Deprecated module name: use :mod:`airflow_provider_upstox.operators.asset_events`.

Kept so DAGs written against earlier versions still import; the trigger's event payloads are
:mod:`airflow_provider_upstox.models.events`, this module persists the *asset* events a watcher made
of them.
"""

from airflow_provider_upstox.operators.asset_events import (
    CHUNK_UPDATES,
    DRAIN_SECONDS,
    LOOKBACK,
    UpstoxPersistAssetEventsOperator,
    persist_asset_events,
    watermark_key,
)

__all__ = [
    "CHUNK_UPDATES",
    "DRAIN_SECONDS",
    "LOOKBACK",
    "UpstoxPersistAssetEventsOperator",
    "persist_asset_events",
    "watermark_key",
]
