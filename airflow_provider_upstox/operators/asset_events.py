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

The look-back is 15 s (60 s before issue 18; ``lookback_seconds`` of the operator sets it). Every
read returns the look-back's events again, and reading an event costs the task about 6 ms (two
loaded cores, ``bench/watcher_dag_scale.py``): with a hundred accounts at one update a second, 60 s
was thousands of events re-read per pass. Airflow 3.3's triggerer stamps an asset event and commits
it in one short transaction per event (``Trigger.submit_event``), so a late commit is a matter of
milliseconds plus the clock skew between triggerer hosts; 15 s leaves a wide margin.

A watcher whose token Upstox refused sends one ``TokenWaitEvent`` per refusal episode (it then
waits for a new token in the connection by itself): it is counted, logged, and handed to the
optional ``on_token_refused`` notifier, the watcher path's one notifier call per episode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_upstox.assets import watched_conn_id
from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    InvalidEventError,
    TokenWaitEvent,
    decode_event,
    group_members,
)
from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.operators._asset_drain import COUNT_NAMES, Cursor, Queued, drain
from airflow_provider_upstox.operators._db import health_records, open_store
from airflow_provider_upstox.operators.history_backfill import trade_book_due_key
from airflow_provider_upstox.store.health import WATCHER

log = logging.getLogger(__name__)

#: Most updates applied in one store transaction by :func:`persist_asset_events`.
CHUNK_UPDATES = 2000
#: How far before the watermark each read starts (see the module docstring).
LOOKBACK = timedelta(seconds=15)
#: How long one task keeps re-reading while new events keep arriving.
DRAIN_SECONDS = 60.0
#: XCom key of the counts when the return value is the backfill groups (``return_backfill_groups``).
COUNTS_XCOM_KEY = "counts"
#: Connections per backfill task: a thousand reconnecting accounts make 40 tasks, not a thousand.
BACKFILL_GROUP_SIZE = 25


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
    """Apply every not yet persisted event of *asset* to the store (:func:`persist_assets_events`
    for one asset).

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
        ``passes`` (reads made), ``read_ms`` (time spent in them), and the new watermark.
    """
    notify = None if on_token_refused is None else (lambda _asset, event: on_token_refused(event))
    store = open_store(sql_conn_id)
    cursors = _drain_all(context, [asset], store, drain_seconds=drain_seconds, on_token_refused=notify)
    return cursors[0].counts


def persist_assets_events(
    context: Any,
    assets: Sequence[Asset],
    sql_conn_id: str = "upstox_db",
    *,
    drain_seconds: float = DRAIN_SECONDS,
    on_token_refused: Callable[[Asset, TokenWaitEvent], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`persist_asset_events` of many assets in one drain loop; counts per asset name.

    One loop serves all (see :mod:`._asset_drain`): one query loads the watermarks, each pass reads
    only the assets whose last read found something new, updates go to the store in shared chunks
    and the watermarks they advance are saved in one transaction per chunk.
    """
    store = open_store(sql_conn_id)
    cursors = _drain_all(
        context, assets, store, drain_seconds=drain_seconds, on_token_refused=on_token_refused
    )
    return {c.asset.name: c.counts for c in cursors}


def _drain_all(
    context: Any,
    assets: Sequence[Asset],
    store: Any,
    *,
    drain_seconds: float,
    on_token_refused: Callable[[Asset, TokenWaitEvent], Any] | None,
    lookback: timedelta = LOOKBACK,
) -> list[Cursor]:
    keys = [watermark_key(a) for a in assets]
    marks = store.load_operator_progress_many(keys)
    cursors = [
        Cursor.load(a, k, marks.get(k), watched_conn_id(a.name)) for a, k in zip(assets, keys, strict=True)
    ]
    inlet_events = context["inlet_events"]
    accessors = {a.name: inlet_events[a] for a in assets}
    drain(
        store,
        cursors,
        accessors,
        _queue_updates,
        lookback=lookback,
        chunk_updates=CHUNK_UPDATES,
        drain_seconds=drain_seconds,
    )
    for cursor in cursors:
        for refusal in cursor.refusals:
            if on_token_refused is None:
                break
            try:
                on_token_refused(cursor.asset, refusal)
            except Exception:  # a broken notifier must not hold the watermark back
                log.exception("The on_token_refused notifier of %s failed", cursor.asset.name)
        if cursor.counts["events"] or len(cursors) == 1:
            log.info("Persisted asset events of %s: %s", cursor.asset.name, cursor.counts)
    if len(cursors) > 1:
        totals = {n: sum(c.counts[n] for c in cursors) for n in (*COUNT_NAMES, "read_ms")}
        log.info("Persisted asset events of %d assets: %s", len(cursors), totals)
    return cursors


def _queue_updates(
    event: Any,
    asset: Asset,
    pending: dict[str, list[Update]],
    counts: dict[str, int],
    refusals: list[TokenWaitEvent],
    health: list[Any],
) -> list[Queued]:
    """Queue the updates of one asset event under their accounts; what was queued, per account batch.

    Every event decoded also adds its connection's stream health record to *health* (the Streams
    page of the plugin; :mod:`airflow_provider_upstox.store.health`), observed at the asset event's
    time, so a replayed event cannot move a row back.

    A group watcher's event (``{"status": "group", "members_zlib": ...}``, read by
    :func:`~airflow_provider_upstox.models.events.group_members`) holds one payload per member
    batch, each naming its connection (``conn_id``). A bad event or member is counted and skipped,
    not raised: raising would hold the watermark before it forever, and no event after it would
    ever be persisted.
    """
    extra = event.extra if isinstance(event.extra, dict) else {}
    if "payload" not in extra:
        log.info(
            "Asset event %s of %s carries no trigger payload (made by hand?); skipped", event.id, asset.name
        )
        counts["foreign"] += 1
        return []
    payload = extra["payload"]
    try:
        members = group_members(payload)
    except InvalidEventError as exc:
        log.error("Asset event %s of %s: %s; skipped", event.id, asset.name, exc)
        counts["invalid"] += 1
        return []
    queued: list[Queued] = []
    observed_at = event.timestamp if event.timestamp.tzinfo else event.timestamp.replace(tzinfo=timezone.utc)
    for member in members if members is not None else [payload]:
        item = _queue_payload(member, event.id, asset, pending, counts, refusals, health, observed_at)
        if item is not None:
            queued.append(item)
    return queued


def _queue_payload(
    payload: Any,
    event_id: int,
    asset: Asset,
    pending: dict[str, list[Update]],
    counts: dict[str, int],
    refusals: list[TokenWaitEvent],
    health: list[Any],
    observed_at: datetime,
) -> Queued | None:
    try:
        stream_event = decode_event(payload)
    except InvalidEventError as exc:
        log.error("Asset event %s of %s: %s; skipped", event_id, asset.name, exc)
        counts["invalid"] += 1
        return None
    member_conn = payload.get("conn_id") if isinstance(payload, dict) else None
    conn = member_conn if isinstance(member_conn, str) and member_conn else watched_conn_id(asset.name)
    if conn:
        health.extend(health_records(conn, stream_event, WATCHER, observed_at))
    if isinstance(stream_event, ErrorEvent):
        counts["errors"] += 1
        log.warning(
            "Stream error reported by the watcher of %s: %s %s",
            asset.name,
            stream_event.kind,
            stream_event.message,
        )
        return None
    if isinstance(stream_event, TokenWaitEvent):
        counts["token_refusals"] += 1
        refusals.append(stream_event)
        log.info(
            "The watcher of %s reported a refused access token (account %s): it waits for a new token",
            asset.name,
            stream_event.account,
        )
        return None
    if not isinstance(stream_event, BatchEvent) or not stream_event.updates:
        return None
    updates = stream_event.updates
    account = stream_event.account or updates[0].account
    if not account:
        log.error("Asset event %s of %s has no account; skipped", event_id, asset.name)
        counts["invalid"] += 1
        return None
    pending.setdefault(account, []).extend(updates)
    counts["batches"] += 1
    counts["updates"] += len(updates)
    conn_id = payload.get("conn_id") if isinstance(payload, dict) else None
    return Queued(len(updates), account, conn_id if isinstance(conn_id, str) and conn_id else None)


class UpstoxPersistAssetEventsOperator(BaseOperator):
    """Persist every new event of watched Upstox assets (see :func:`persist_asset_events`).

    :param assets: the watched assets (``assets.watched_asset(...)``); also become the task's inlets.
    :param sql_conn_id: the store's SQL connection.
    :param on_token_refused: an Airflow notifier (``BaseNotifier``) or callable taking the context,
        called once per refusal episode a watcher reported; the context also holds
        ``upstox_token_refused`` (asset, account, since, the refusal's text: no secret).
    :param return_backfill_groups: return the groups of connections with history backfill work
        (:func:`backfill_groups`, for a mapped ``UpstoxHistoryBackfillOperator``: Airflow maps only
        over a return value) and push the counts under the XCom key ``counts``; by default the
        counts per asset name are the return value.
    :param backfill_group_size: connections per group.
    :param lookback_seconds: how far before its watermark each read of an asset starts (see the
        module docstring); raise it when triggerers run on hosts whose clocks may differ more.
    """

    template_fields: Sequence[str] = ("sql_conn_id",)

    def __init__(
        self,
        *,
        assets: Sequence[Asset],
        sql_conn_id: str = "upstox_db",
        on_token_refused: Callable[[Any], Any] | None = None,
        return_backfill_groups: bool = False,
        backfill_group_size: int = BACKFILL_GROUP_SIZE,
        lookback_seconds: float = LOOKBACK.total_seconds(),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("inlets", list(assets))
        super().__init__(**kwargs)
        self.assets = list(assets)
        self.sql_conn_id = sql_conn_id
        self.on_token_refused = on_token_refused
        self.return_backfill_groups = return_backfill_groups
        self.backfill_group_size = backfill_group_size
        self.lookback_seconds = float(lookback_seconds)

    def execute(self, context: Any) -> Any:
        store = open_store(self.sql_conn_id)
        cursors = _drain_all(
            context,
            self.assets,
            store,
            drain_seconds=DRAIN_SECONDS,
            on_token_refused=self._notifier(context),
            lookback=timedelta(seconds=self.lookback_seconds),
        )
        counts = {c.asset.name: c.counts for c in cursors}
        if not self.return_backfill_groups:
            return counts
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key=COUNTS_XCOM_KEY, value=counts)
        return backfill_groups(store, cursors, self.backfill_group_size)

    def _notifier(self, context: Any) -> Callable[[Asset, TokenWaitEvent], None] | None:
        notifier = self.on_token_refused
        if notifier is None:
            return None

        def notify(asset: Asset, event: TokenWaitEvent) -> None:
            since = datetime.fromtimestamp(event.since_us / 1e6, timezone.utc).isoformat(timespec="seconds")
            details = {
                "asset": asset.name,
                "account": event.account,
                "since": since,
                "message": event.message,
            }
            notifier({**context, "upstox_token_refused": details})

        return notify


def backfill_groups(store: Any, cursors: Sequence[Cursor], size: int) -> list[list[str]]:
    """The connection ids whose account has history backfill work, in groups of *size*.

    Work: the trade book is due (a batch carried snapshot rows: recorded here, durably, under
    :func:`~.history_backfill.trade_book_due_key` until a backfill reads it), or the account's
    backfill queue is not empty. Three queries whatever the number of accounts.
    """
    conn_of: dict[str, str] = {}  # account -> connection, in the order the assets name them
    for cursor in cursors:
        for account, conn in cursor.conns.items():
            conn_of.setdefault(account, conn)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    due_now = {
        trade_book_due_key(conn_id): {"due": True, "since": now}
        for cursor in cursors
        for account in cursor.snapshots
        if (conn_id := cursor.conn_of(account))
    }
    if due_now:
        store.save_operator_progress_many(due_now)
    conns = list(dict.fromkeys(conn_of.values()))
    due = store.load_operator_progress_many([trade_book_due_key(c) for c in conns])
    queued = {conn_of[a] for a in store.accounts_with_pending_backfill() if a in conn_of}
    needed = [c for c in conns if c in queued or due.get(trade_book_due_key(c), {}).get("due")]
    return [needed[i : i + size] for i in range(0, len(needed), size)]
