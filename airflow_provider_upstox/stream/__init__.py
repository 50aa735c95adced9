"""Airflow-free reconnecting client of the Upstox Portfolio Stream Feed (see :mod:`.client`)."""

from airflow_provider_upstox.stream.backoff import exponential_backoff, no_delays
from airflow_provider_upstox.stream.client import Authorize, PortfolioStreamClient, Snapshot, StreamStats
from airflow_provider_upstox.stream.decode import FrameDecodeError, decode_frame

__all__ = [
    "Authorize",
    "FrameDecodeError",
    "PortfolioStreamClient",
    "Snapshot",
    "StreamStats",
    "decode_frame",
    "exponential_backoff",
    "no_delays",
]
