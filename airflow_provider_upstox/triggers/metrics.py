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


def stream_tags(conn_id: str, account: str | None) -> dict[str, str]:
    """Tags naming one account's stream (OpenTelemetry, Datadog, StatsD with InfluxDB tags)."""
    return {"conn_id": conn_id, "account": account or "unknown"}


def report(lease: StreamLease, batch_size: int, lag_ms: float | None) -> None:
    """Send one event's worth of metrics: counter deltas, batch size, lag and buffer depth.

    Every metric is tagged with the connection and account (:func:`stream_tags`): sums over the
    tags give the totals a dashboard of the whole fleet shows.
    """
    stats: Any = lease.stream.stats
    reported = lease.reported
    tags = stream_tags(lease.key[0], lease.account)
    for name in _COUNTERS:
        value = getattr(stats, name)
        delta = value - reported.get(name, 0)
        if delta:
            _stats.incr(f"{PREFIX}.{name}", delta, tags=tags)
            reported[name] = value
    _stats.incr(f"{PREFIX}.batches", tags=tags)
    _stats.incr(f"{PREFIX}.updates", batch_size, tags=tags)
    if lag_ms is not None:
        _stats.timing(f"{PREFIX}.lag", lag_ms, tags=tags)
    _stats.gauge(f"{PREFIX}.pending", lease.stream.pending, tags=tags)


def report_token_refused(conn_id: str) -> None:
    """One refusal episode began (once per refused token, not per retry)."""
    _stats.incr(f"{PREFIX}.token_refused", tags={"conn_id": conn_id})


def report_token_renewed(conn_id: str, waited_s: float) -> None:
    """The stream is connected again after a refusal episode that lasted *waited_s* seconds."""
    _stats.incr(f"{PREFIX}.token_renewed", tags={"conn_id": conn_id})
    _stats.timing(f"{PREFIX}.token_wait", waited_s * 1000, tags={"conn_id": conn_id})
