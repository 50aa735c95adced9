"""Airflow-free Upstox REST client: one request core (:mod:`.core`), sync and async senders, retries.

No ``airflow`` import here: the stream client and the simulator tests use it directly.
"""

from airflow_provider_upstox.client.aio import AsyncUpstoxClient
from airflow_provider_upstox.client.config import DEFAULT_BASE_URL, UpstoxClientConfig
from airflow_provider_upstox.client.retry import is_retryable
from airflow_provider_upstox.client.sync import UpstoxClient

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncUpstoxClient",
    "UpstoxClient",
    "UpstoxClientConfig",
    "is_retryable",
]
