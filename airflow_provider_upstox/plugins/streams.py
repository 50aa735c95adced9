"""The *Streams* view: every connection's stream health joined with its token state, worst first.

The triggerer writes nothing the API server could read directly; the stream operators record each
connection's health in the store (:mod:`airflow_provider_upstox.store.health`). This module reads
that table through the store's public API, on the Airflow SQL connection ``[upstox]
health_sql_conn_id``, else ``UPSTOX_SQL_CONN_ID`` (what the example DAGs write to), else
``upstox_db``; reads run in a worker thread, never on the API server's event loop.

Rows: every readable ``upstox`` connection (``no stream`` when it never recorded a stream) plus
every health row of a connection the user may read that no longer exists. Sorted worst first
(:data:`~airflow_provider_upstox.store.health.HEALTH_ORDER`), then oldest event first; paged.
Thresholds: ``[upstox] stream_stale_after`` (seconds, default 600) and ``stream_lag_warn_ms``
(default 5000). The token column shows what the connection's renewal record says (valid until,
refused since): no profile read per connection, so a page of a thousand accounts costs Upstox
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from airflow_provider_upstox.plugins.status import TokenStatus
from airflow_provider_upstox.store import health

log = logging.getLogger(__name__)

#: Rows per page by default, and at most.
DEFAULT_LIMIT: Final = 200
MAX_LIMIT: Final = 1000


def conf_value(name: str, default: str) -> str:
    """``[upstox] <name>`` of Airflow's configuration, else *default*."""
    from airflow.configuration import conf

    return str(conf.get("upstox", name, fallback="") or default)


def _conf_float(name: str, default: float) -> float:
    try:
        value = float(conf_value(name, str(default)))
    except ValueError:
        log.warning("[upstox] %s is not a number; using %s", name, default)
        return default
    return value if value > 0 else default


def health_sql_conn_id() -> str:
    from airflow_provider_upstox.assets import configured_sql_conn_id

    return conf_value("health_sql_conn_id", configured_sql_conn_id())


@dataclass(frozen=True)
class Thresholds:
    stale_after_s: float = health.DEFAULT_STALE_AFTER_S
    lag_warn_ms: float = health.DEFAULT_LAG_WARN_MS

    @classmethod
    def configured(cls) -> Thresholds:
        return cls(
            _conf_float("stream_stale_after", health.DEFAULT_STALE_AFTER_S),
            _conf_float("stream_lag_warn_ms", health.DEFAULT_LAG_WARN_MS),
        )


class HealthSource:
    """The store's health rows, one cached store (engine pool) per SQL connection id.

    :meth:`read` returns ``(rows, problem)``: a missing or unreachable store is shown on the page
    (``problem``), not raised, so the rest of the page (the connections) still renders.
    """

    def __init__(self) -> None:
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()

    def read_sync(self, sql_conn_id: str | None = None) -> list[dict[str, Any]]:
        """The rows (blocking; raises when the store cannot be read)."""
        sql_conn_id = sql_conn_id or health_sql_conn_id()
        with self._lock:
            store = self._stores.get(sql_conn_id)
            if store is None:
                from airflow_provider_upstox.hooks.store import get_portfolio_store

                store = self._stores[sql_conn_id] = get_portfolio_store(sql_conn_id)
        return store.read_stream_health()  # type: ignore[no-any-return]

    async def read(self) -> tuple[list[dict[str, Any]], str | None]:
        sql_conn_id = health_sql_conn_id()
        try:
            return await asyncio.to_thread(self.read_sync, sql_conn_id), None
        except Exception as exc:  # the page must render without the store
            log.warning("Could not read the stream health from %s: %s", sql_conn_id, type(exc).__name__)
            with self._lock:
                self._stores.pop(sql_conn_id, None)
            return [], f"the stream health store (SQL connection {sql_conn_id!r}) could not be read"


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _age_s(value: datetime | None, now: datetime) -> float | None:
    return None if value is None else round(max(0.0, (now - value).total_seconds()), 1)


def stream_row(
    conn_id: str, row: Mapping[str, Any] | None, token: TokenStatus | None, now: datetime, limits: Thresholds
) -> dict[str, Any]:
    """One connection as the page and the JSON show it (times: epoch ms; ages: seconds)."""
    row = row or {}
    label = health.assess(row or None, now, limits.stale_after_s, limits.lag_warn_ms)
    return {
        "conn_id": conn_id,
        "account": row.get("account") or (token.user_id if token else None),
        "health": label,
        "state": row.get("state"),
        "consumer": row.get("consumer"),
        "state_since": _ms(row.get("state_since")),
        "last_event_at": _ms(row.get("last_event_at")),
        "last_event_age_s": _age_s(row.get("last_event_at"), now),
        "last_message_at": _ms(row.get("last_message_at")),
        "last_message_age_s": _age_s(row.get("last_message_at"), now),
        "connection_epoch": row.get("connection_epoch"),
        "reconnects": row.get("reconnects"),
        "messages": row.get("messages"),
        "lag_ms": row.get("lag_ms"),
        "pending": row.get("pending"),
        "error_kind": row.get("error_kind"),
        "error_at": _ms(row.get("error_at")),
        "token_refused_since": _ms(row.get("token_refused_since")),
        "token": None
        if token is None
        else {
            "valid_until": token.valid_until,
            "refused_since": token.refused_since,
            "source": token.source,
            "read_only_reason": token.read_only_reason,
        },
    }


def _sort_key(item: dict[str, Any]) -> tuple[int, int, str]:
    return (health.rank(item["health"]), item["last_event_at"] or 0, item["conn_id"])


def build(
    health_rows: Iterable[Mapping[str, Any]],
    tokens: Iterable[TokenStatus],
    may_read: Any,
    now: datetime | None = None,
    limits: Thresholds | None = None,
) -> list[dict[str, Any]]:
    """Rows for every connection in *tokens* (the readable ones) and every health row *may_read*
    accepts (``may_read(conn_id) -> bool``), worst first."""
    now = now or datetime.now(timezone.utc)
    limits = limits or Thresholds()
    by_conn = {t.conn_id: t for t in tokens}
    rows = {r["conn_id"]: r for r in health_rows}
    ids = set(by_conn) | {c for c in rows if c not in by_conn and may_read(c)}
    items = [stream_row(c, rows.get(c), by_conn.get(c), now, limits) for c in ids]
    items.sort(key=_sort_key)
    return items


def summary(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many connections per health label (every label, worst first)."""
    counts = Counter(item["health"] for item in items)
    return {label: counts.get(label, 0) for label in health.HEALTH_ORDER}


def page_of(
    items: list[dict[str, Any]], offset: int, limit: int, only: str | None
) -> tuple[list[dict[str, Any]], int]:
    """The page of *items* (optionally only health *only*, or ``problems``: not
    :data:`~airflow_provider_upstox.store.health.FINE`) and the total."""
    if only == "problems":
        items = [i for i in items if i["health"] not in health.FINE]
    elif only:
        items = [i for i in items if i["health"] == only]
    limit = max(1, min(limit, MAX_LIMIT))
    offset = max(0, offset)
    return items[offset : offset + limit], len(items)
