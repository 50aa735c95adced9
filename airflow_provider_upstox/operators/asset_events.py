"""Event-driven ingestion: persist the batches an ``AssetWatcher`` turned into asset events.

With an :class:`~airflow.sdk.AssetWatcher` on ``UpstoxPortfolioStreamTrigger``, every trigger event
becomes an asset event whose ``extra`` is ``{"from_trigger": true, "payload": <the event>}``; a DAG
scheduled on the asset persists them. The payload is decoded by
:func:`~airflow_provider_upstox.models.events.decode_event`, the same contract the continuous
operator reads, which also decodes the events earlier versions of the provider queued.

Why not just ``triggering_asset_events``: Airflow has consumed events queued during an active run
only when a later event came (apache/airflow#56050), and HA schedulers have started two runs for
one event (#63507). So :func:`persist_asset_events` reads *every* event of the asset after a
watermark kept in the store's database (``inlet_events[asset].after(...)``), applies them in
(timestamp, id) order and advances the watermark after each applied chunk. The watermark is the
last event's timestamp plus the ids of the events applied in the :data:`LOOKBACK` before it: the
read starts that much earlier and skips those ids, so an event committed late with a slightly
older timestamp (another scheduler or triggerer, clock skew) is still picked up. A second run for
the same events, or a crash between apply and watermark, replays batches the store already has:
harmless, the store is idempotent.

A watcher whose token Upstox refused sends one ``TokenWaitEvent`` per refusal episode (it then
waits for a new token in the connection by itself): it is counted, logged, and handed to the
optional ``on_token_refused`` notifier, the watcher path's one notifier call per episode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_upstox.assets import ASSET_SCHEME
from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    InvalidEventError,
    StreamEvent,
    TokenWaitEvent,
    decode_event,
)
from airflow_provider_upstox.models.updates import SNAPSHOT, Update
from airflow_provider_upstox.operators._db import (
    health_records,
    load_progress,
    open_store,
    record_stream_health,
    save_progress,
)
from airflow_provider_upstox.store.health import WATCHER

log = logging.getLogger(__name__)

#: Most updates applied in one store transaction by :func:`persist_asset_events`.
CHUNK_UPDATES = 2000
#: How far before the watermark each read starts (see the module docstring).
LOOKBACK = timedelta(seconds=60)
#: How long one task keeps re-reading while new events keep arriving.
DRAIN_SECONDS = 60.0


def watermark_key(asset: Asset) -> str:
    return f"asset_events:{asset.name}"


def persist_asset_events(
    context: Any,
    asset: Asset,
    sql_conn_id: str = "upstox_db",
    *,
    drain_seconds: float = DRAIN_SECONDS,
    on_token_refused: Callable[[TokenWaitEvent], Any] | None = None,
) -> dict[str, Any]:
    """Apply every not yet persisted event of *asset* to the store; one call per task.

    Reads again after each applied pass until a read finds nothing new (or *drain_seconds* have
    passed, so a flood cannot keep one task running forever), which shrinks the window in which an
    event can arrive during a run and wait for a later one (see the module docstring).

    The task must declare *asset* in its ``inlets``.

    :param on_token_refused: called once per ``TokenWaitEvent`` read (one per refusal episode of
        the watcher), after the events before it are persisted.
    :returns: counts: ``events`` applied, ``batches`` among them, ``updates``, ``errors`` (error
        events the watcher reported), ``token_refusals`` (refusal episodes the watcher reported),
        ``invalid`` (events whose payload is not a decodable event with an account: logged and
        skipped), ``foreign`` (events without a trigger payload, e.g.
        created by hand: skipped), ``skipped`` (events read that an earlier call had applied),
        ``passes`` (reads made), and the new watermark.
    """
    store = open_store(sql_conn_id)
    key = watermark_key(asset)
    mark = load_progress(store, key) or {}
    mark_dt = datetime.fromisoformat(mark["timestamp"]) if mark.get("timestamp") else None
    recent: dict[int, str] = {int(k): v for k, v in (mark.get("recent") or {}).items()}
    accessor = context["inlet_events"][asset]
    counts = dict.fromkeys(
        (
            "events",
            "batches",
            "updates",
            "errors",
            "token_refusals",
            "invalid",
            "foreign",
            "skipped",
            "passes",
        ),
        0,
    )
    refusals: list[TokenWaitEvent] = []
    pending: dict[str, list[Update]] = {}
    pending_size = 0
    seen: list[tuple[str, StreamEvent, datetime]] = []  # for the stream health, after each chunk
    conn_id = conn_id_of(asset)
    last: Any = None

    def flush() -> None:
        nonlocal pending, pending_size, mark_dt
        # the chunk's stream health rides in the transaction of its last apply (or goes alone)
        records = [r for c, e, at in seen for r in health_records(c, e, WATCHER, at)]
        seen.clear()
        for i, (account, updates) in enumerate(pending.items(), 1):
            if any(u.source == SNAPSHOT for u in updates):
                # Before apply(): the orders whose snapshot state the store never saw, for the
                # history backfill (UpstoxHistoryBackfillOperator drains the queue).
                store.queue_history_backfill(account, updates)
            last_apply = i == len(pending)
            store.apply(updates, account=account, health_records=records if last_apply else ())
            records = [] if last_apply else records
        if records:
            record_stream_health(store, records)
        if last is not None:
            horizon = last.timestamp - LOOKBACK
            kept = {i: t for i, t in recent.items() if datetime.fromisoformat(t) >= horizon}
            recent.clear()
            recent.update(kept)
            mark_dt = last.timestamp
            save_progress(
                store,
                key,
                {
                    "timestamp": last.timestamp.isoformat(),
                    "event_id": last.id,
                    "recent": {str(i): t for i, t in kept.items()},
                },
            )
        pending, pending_size = {}, 0

    handled: set[int] = set()  # applied by this call
    skipped: set[int] = set()  # read, but applied before this call
    deadline = time.monotonic() + drain_seconds
    while True:
        # ``after()`` of Airflow's accessor resets its cache, so every pass is a fresh query.
        events = list(accessor.after((mark_dt - LOOKBACK).isoformat()) if mark_dt else accessor)
        events.sort(key=lambda e: (e.timestamp, e.id))
        counts["passes"] += 1
        fresh = 0
        for event in events:
            if event.id in recent or (mark_dt is not None and event.timestamp < mark_dt - LOOKBACK):
                if event.id not in handled:
                    skipped.add(event.id)
                continue
            fresh += 1
            handled.add(event.id)
            recent[event.id] = event.timestamp.isoformat()
            decoded = _decode(event, asset, counts)
            if decoded is not None:
                seen.append((conn_id, decoded, _aware(event.timestamp)))
                pending_size += _queue_updates(decoded, event, asset, pending, counts, refusals)
            last = event
            if pending_size >= CHUNK_UPDATES:
                flush()
        flush()
        if not fresh or time.monotonic() >= deadline:
            break
    counts["events"], counts["skipped"] = len(handled), len(skipped)
    for refusal in refusals:
        if on_token_refused is None:
            break
        try:
            on_token_refused(refusal)
        except Exception:  # a broken notifier must not hold the watermark back
            log.exception("The on_token_refused notifier of %s failed", asset.name)
    if last is not None:
        counts["watermark_event_id"] = last.id
    log.info("Persisted asset events of %s: %s", asset.name, counts)
    return counts


def conn_id_of(asset: Asset) -> str:
    """The upstox connection of a watched asset (``upstox://<conn_id>/events``), else its name."""
    prefix = f"{ASSET_SCHEME}://"
    if asset.uri.startswith(prefix):
        return asset.uri[len(prefix) :].split("/", 1)[0]
    return asset.name


def _aware(timestamp: datetime) -> datetime:
    return timestamp if timestamp.tzinfo is not None else timestamp.replace(tzinfo=timezone.utc)


def _decode(event: Any, asset: Asset, counts: dict[str, int]) -> StreamEvent | None:
    """The trigger event an asset event carries, or ``None`` (counted as foreign or invalid).

    A bad event is counted and skipped, not raised: raising would hold the watermark before it
    forever, and no event after it would ever be persisted.
    """
    extra = event.extra if isinstance(event.extra, dict) else {}
    if "payload" not in extra:
        log.info(
            "Asset event %s of %s carries no trigger payload (made by hand?); skipped", event.id, asset.name
        )
        counts["foreign"] += 1
        return None
    try:
        return decode_event(extra["payload"])
    except InvalidEventError as exc:
        log.error("Asset event %s of %s: %s; skipped", event.id, asset.name, exc)
        counts["invalid"] += 1
        return None


def _queue_updates(
    stream_event: StreamEvent,
    event: Any,
    asset: Asset,
    pending: dict[str, list[Update]],
    counts: dict[str, int],
    refusals: list[TokenWaitEvent],
) -> int:
    """Queue the updates of one decoded asset event under its account; returns how many."""
    if isinstance(stream_event, ErrorEvent):
        counts["errors"] += 1
        log.warning(
            "Stream error reported by the watcher of %s: %s %s",
            asset.name,
            stream_event.kind,
            stream_event.message,
        )
        return 0
    if isinstance(stream_event, TokenWaitEvent):
        counts["token_refusals"] += 1
        refusals.append(stream_event)
        log.info(
            "The watcher of %s reported a refused access token (account %s): it waits for a new token",
            asset.name,
            stream_event.account,
        )
        return 0
    if not isinstance(stream_event, BatchEvent) or not stream_event.updates:
        return 0
    updates = stream_event.updates
    account = stream_event.account or updates[0].account
    if not account:
        log.error("Asset event %s of %s has no account; skipped", event.id, asset.name)
        counts["invalid"] += 1
        return 0
    pending.setdefault(account, []).extend(updates)
    counts["batches"] += 1
    counts["updates"] += len(updates)
    return len(updates)


class UpstoxPersistAssetEventsOperator(BaseOperator):
    """Persist every new event of watched Upstox assets (see :func:`persist_asset_events`).

    :param assets: the watched assets (``assets.watched_asset(...)``); also become the task's inlets.
    :param sql_conn_id: the store's SQL connection.
    :param on_token_refused: an Airflow notifier (``BaseNotifier``) or callable taking the context,
        called once per refusal episode a watcher reported; the context also holds
        ``upstox_token_refused`` (asset, account, since, the refusal's text: no secret).
    """

    template_fields: Sequence[str] = ("sql_conn_id",)

    def __init__(
        self,
        *,
        assets: Sequence[Asset],
        sql_conn_id: str = "upstox_db",
        on_token_refused: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("inlets", list(assets))
        super().__init__(**kwargs)
        self.assets = list(assets)
        self.sql_conn_id = sql_conn_id
        self.on_token_refused = on_token_refused

    def execute(self, context: Any) -> dict[str, Any]:
        return {
            asset.name: persist_asset_events(
                context, asset, self.sql_conn_id, on_token_refused=self._notifier(context, asset)
            )
            for asset in self.assets
        }

    def _notifier(self, context: Any, asset: Asset) -> Callable[[TokenWaitEvent], None] | None:
        notifier = self.on_token_refused
        if notifier is None:
            return None

        def notify(event: TokenWaitEvent) -> None:
            since = datetime.fromtimestamp(event.since_us / 1e6, timezone.utc).isoformat(timespec="seconds")
            details = {
                "asset": asset.name,
                "account": event.account,
                "since": since,
                "message": event.message,
            }
            notifier({**context, "upstox_token_refused": details})

        return notify
