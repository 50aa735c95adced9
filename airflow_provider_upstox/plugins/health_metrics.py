"""Per-connection stream health as Airflow metrics, sent by the API server from the store.

The trigger's own metrics (``upstox.stream.messages``, ``.reconnects``, ``.lag``...) say what a
stream did; they cannot say that a stream went *silent*, because a dead or stuck triggerer sends
nothing. So the API server, which shows the Streams page anyway, reads the health rows every
``[upstox] health_metrics_interval`` seconds (default 60, ``0`` turns it off) in a daemon thread
and sends gauges computed at that moment: ages grow while nothing is recorded.

Per connection (tags ``conn_id`` and ``account``): ``upstox.stream.health.healthy`` (1: *ok* or
*stopped*, nothing to do),
``.connected`` (1: connected or idle and not stale), ``.last_message_age`` and ``.last_event_age``
(seconds), ``.reconnects``, ``.lag_ms``, ``.token_valid_for`` (seconds until the token dies).
Fleet-wide, untagged so that plain StatsD sees them too: ``upstox.stream.health.<label>`` with
``<label>`` in ``error``, ``token_refused``, ``stale``, ``lagging``, ``no_stream``, ``stopped``,
``ok`` (how many connections are in it). Each API server worker sends the same gauges: a gauge is a
value, so repeats are harmless.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from airflow_provider_upstox.plugins import streams
from airflow_provider_upstox.store import health

log = logging.getLogger(__name__)

PREFIX: Final = "upstox.stream.health"
DEFAULT_INTERVAL_S: Final = 60.0


def _stats() -> Any:
    try:  # Airflow 3.3 / task-sdk: the supported place
        from airflow.sdk.observability import stats
    except ImportError:  # pragma: no cover - older Airflow
        from airflow.stats import Stats as stats  # type: ignore[no-redef]
    return stats


def emit(items: Iterable[Mapping[str, Any]], now_ms: int, stats: Any = None) -> None:
    """Send the gauges of *items* (rows of :func:`streams.build`) as of *now_ms*."""
    stats = stats or _stats()
    listed = list(items)
    for item in listed:
        tags = {"conn_id": str(item["conn_id"]), "account": str(item["account"] or "unknown")}
        connected = item["state"] in ("connected", "idle") and item["health"] not in ("stale", "no stream")
        stats.gauge(f"{PREFIX}.healthy", int(item["health"] in health.FINE), tags=tags)
        stats.gauge(f"{PREFIX}.connected", int(connected), tags=tags)
        for name, key in (
            ("last_message_age", "last_message_age_s"),
            ("last_event_age", "last_event_age_s"),
            ("reconnects", "reconnects"),
            ("lag_ms", "lag_ms"),
        ):
            if item[key] is not None:
                stats.gauge(f"{PREFIX}.{name}", item[key], tags=tags)
        token = item["token"]
        if token and token["valid_until"] and not token["refused_since"]:
            stats.gauge(
                f"{PREFIX}.token_valid_for", max(0, (token["valid_until"] - now_ms) // 1000), tags=tags
            )
    for label, count in streams.summary(listed).items():
        stats.gauge(f"{PREFIX}.{label.replace(' ', '_')}", count)


def collect(source: streams.HealthSource) -> list[dict[str, Any]]:
    """Every connection's row, as an admin sees the page (blocking: call it from a thread)."""
    from airflow_provider_upstox.plugins import connections
    from airflow_provider_upstox.plugins.status import statuses

    rows = source.read_sync()
    tokens = asyncio.run(statuses(connections.list_connections(), probe=False))
    return streams.build(rows, tokens, lambda _conn_id: True, limits=streams.Thresholds.configured())


class HealthReporter:
    """A daemon thread sending :func:`emit` of :func:`collect` every *interval* seconds."""

    def __init__(self, source: streams.HealthSource, interval: float) -> None:
        self.source = source
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstox-health-metrics", daemon=True)

    def start(self) -> HealthReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                emit(collect(self.source), int(time.time() * 1000))
            except Exception as exc:  # keep reporting: the store may come back
                log.warning("Upstox stream health metrics not sent: %s", type(exc).__name__)


def start_reporter(source: streams.HealthSource) -> HealthReporter | None:
    """The reporter of ``[upstox] health_metrics_interval`` (``None`` when it is ``0``)."""
    try:
        interval = float(streams.conf_value("health_metrics_interval", str(DEFAULT_INTERVAL_S)))
    except ValueError:
        interval = DEFAULT_INTERVAL_S
    if interval <= 0:
        return None
    return HealthReporter(source, interval).start()
