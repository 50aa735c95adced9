"""Stream metrics through Airflow's ``Stats`` (StatsD/OpenTelemetry, whatever the deployment set up).

Counters are sent as deltas of the stream client's cumulative counters, once per event, so the
per-message path pays nothing for metrics.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_upstox.triggers.handoff import StreamLease

try:  # Airflow 3.3 / task-sdk: the supported place
    from airflow.sdk.observability import stats as _stats
except ImportError:  # pragma: no cover - older Airflow
    from airflow.stats import Stats as _stats  # type: ignore[no-redef]

PREFIX = "upstox.stream"
_COUNTERS = ("messages", "reconnects", "decode_errors", "snapshot_rows", "idle_timeouts", "auth_failures")


def report(lease: StreamLease, batch_size: int, lag_ms: float | None) -> None:
    """Send one event's worth of metrics: counter deltas, batch size, lag and buffer depth."""
    stats: Any = lease.stream.stats
    reported = lease.reported
    for name in _COUNTERS:
        value = getattr(stats, name)
        delta = value - reported.get(name, 0)
        if delta:
            _stats.incr(f"{PREFIX}.{name}", delta)
            reported[name] = value
    _stats.incr(f"{PREFIX}.batches")
    _stats.incr(f"{PREFIX}.updates", batch_size)
    if lag_ms is not None:
        _stats.timing(f"{PREFIX}.lag", lag_ms)
    _stats.gauge(f"{PREFIX}.pending", lease.stream.pending)
