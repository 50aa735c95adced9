"""Airflow assets of the Upstox provider: what the stream produces, and what downstream DAGs schedule on.

Naming (stable: DAGs schedule on these names, so changing them breaks users' DAGs):

* one asset per Upstox connection and portfolio kind, emitted by
  :class:`~airflow_provider_upstox.operators.portfolio_stream.UpstoxPortfolioStreamOperator` for each kind it
  persisted during a run: name ``upstox_<kind>__<conn_id>``, URI ``upstox://<conn_id>/<kind>`` with
  ``kind`` in ``orders``, ``positions``, ``holdings``, ``gtt_orders``;
* the stream operator's outlet is an :class:`~airflow.sdk.AssetAlias` ``upstox_stream__<conn_id>``.
  Through an alias the task emits events only for the kinds it actually wrote (declaring the four
  assets as plain outlets would emit all four on every success, waking consumers for nothing);
* one *watched* asset per connection for event-driven ingestion: name ``upstox_events__<conn_id>``,
  URI ``upstox://<conn_id>/events``, carrying an :class:`~airflow.sdk.AssetWatcher` on
  :class:`~airflow_provider_upstox.triggers.portfolio_stream.UpstoxPortfolioStreamTrigger`.

The connection id, not the Upstox user id, names the assets: DAG files are parsed without network
access, and the user id is only known after a profile call. Rows in the store carry the user id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from airflow.sdk import Asset, AssetAlias, AssetWatcher

if TYPE_CHECKING:
    from airflow.triggers.base import BaseEventTrigger

from airflow_provider_upstox.market_hours import parse_stop_at
from airflow_provider_upstox.models.updates import GTT_ORDER, HOLDING, ORDER, POSITION, normalize_update_types

log = logging.getLogger(__name__)

#: Update type -> the asset kind (plural, as in the table names).
ASSET_KINDS: Final[dict[str, str]] = {
    ORDER: "orders",
    POSITION: "positions",
    HOLDING: "holdings",
    GTT_ORDER: "gtt_orders",
}
#: Environment variable listing the Upstox connection ids the example DAGs serve (comma separated).
CONN_IDS_ENV: Final = "UPSTOX_CONN_IDS"
#: Airflow Variable read when the environment variable is not set.
CONN_IDS_VARIABLE: Final = "upstox_conn_ids"
DEFAULT_CONN_ID: Final = "upstox_default"
ASSET_SCHEME: Final = "upstox"


def _check_conn_id(conn_id: str) -> str:
    if not conn_id or any(c in conn_id for c in "/ ?#:@"):
        raise ValueError(f"connection id {conn_id!r} cannot name an asset (no '/', ' ', '?', '#', ':', '@')")
    return conn_id


def portfolio_asset(conn_id: str, update_type: str) -> Asset:
    """The asset of one portfolio kind of one connection (``upstox_orders__upstox_default``).

    :raises ValueError: unknown update type, or a connection id that cannot be part of a URI.
    """
    kind = ASSET_KINDS.get(update_type)
    if kind is None:
        raise ValueError(f"no asset for update type {update_type!r}; valid: {', '.join(ASSET_KINDS)}")
    _check_conn_id(conn_id)
    return Asset(name=f"upstox_{kind}__{conn_id}", uri=f"{ASSET_SCHEME}://{conn_id}/{kind}", group="upstox")


def portfolio_assets(conn_id: str, update_types: str | Iterable[str] | None = None) -> list[Asset]:
    """The assets of every subscribed kind of *conn_id*, in canonical order."""
    return [portfolio_asset(conn_id, t) for t in normalize_update_types(update_types)]


def stream_alias(conn_id: str) -> AssetAlias:
    """The alias the stream operator emits through (see the module docstring for why an alias)."""
    return AssetAlias(name=f"upstox_stream__{_check_conn_id(conn_id)}", group="upstox")


def watched_asset(
    conn_id: str,
    update_types: str | Iterable[str] | None = None,
    *,
    max_batch_size: int = 500,
    max_batch_wait: float = 1.0,
    idle_timeout: float = 60.0,
) -> Asset:
    """The event-driven asset of *conn_id*: a watcher streams the portfolio, each batch is an asset event.

    The trigger kwargs hold the connection id, never a credential: they are stored as JSON in
    Airflow's database. The watcher's name is its identity in the triggerer.
    """
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    _check_conn_id(conn_id)
    trigger = UpstoxPortfolioStreamTrigger(
        upstox_conn_id=conn_id,
        update_types=list(normalize_update_types(update_types)),
        max_batch_size=max_batch_size,
        max_batch_wait=max_batch_wait,
        idle_timeout=idle_timeout,
    )
    return _watched(
        f"upstox_events__{conn_id}",
        f"{ASSET_SCHEME}://{conn_id}/events",
        f"upstox_watcher__{conn_id}",
        trigger,
    )


def watched_group_asset(
    group: str,
    conn_ids: Sequence[str],
    update_types: str | Iterable[str] | None = None,
    *,
    max_batch_size: int = 500,
    max_batch_wait: float = 1.0,
    idle_timeout: float = 60.0,
) -> Asset:
    """The event-driven asset of a group of connections: ``upstox_events_group__<group>``.

    One watcher (:class:`~airflow_provider_upstox.triggers.portfolio_group.UpstoxPortfolioGroupStreamTrigger`)
    streams every account of the group; each account batch is an event of this one asset (see that
    module for why: one asset per account costs a read per account in every persist run).
    """
    from airflow_provider_upstox.triggers.portfolio_group import UpstoxPortfolioGroupStreamTrigger

    _check_conn_id(group)
    trigger = UpstoxPortfolioGroupStreamTrigger(
        upstox_conn_ids=[_check_conn_id(c) for c in conn_ids],
        update_types=list(normalize_update_types(update_types)),
        max_batch_size=max_batch_size,
        max_batch_wait=max_batch_wait,
        idle_timeout=idle_timeout,
    )
    return _watched(
        f"upstox_events_group__{group}",
        f"{ASSET_SCHEME}://groups/{group}/events",
        f"upstox_group_watcher__{group}",
        trigger,
    )


def _watched(name: str, uri: str, watcher: str, trigger: BaseEventTrigger) -> Asset:
    """An asset of the ``upstox`` group with one watcher; *watcher* is its identity in the triggerer."""
    return Asset(name=name, uri=uri, group="upstox", watchers=[AssetWatcher(name=watcher, trigger=trigger)])


def watched_assets(
    conn_ids: Sequence[str], group_size: int = 1, *, max_batch_wait: float = 1.0
) -> list[Asset]:
    """The watched assets of *conn_ids*: one per connection (``group_size`` 1, the default and the
    names DAGs have scheduled on), else one per consecutive group of ``group_size`` connections,
    named by position (``g0``, ``g1``, ...: adding connections at the end changes only the last group).
    """
    if group_size <= 1:
        return [watched_asset(c, max_batch_wait=max_batch_wait) for c in conn_ids]
    return [
        watched_group_asset(
            f"g{i // group_size}", conn_ids[i : i + group_size], max_batch_wait=max_batch_wait
        )
        for i in range(0, len(conn_ids), group_size)
    ]


def configured_group_size() -> int:
    """``UPSTOX_WATCH_GROUP_SIZE``: accounts per watcher of the events DAG (default 1: one each).

    :raises ValueError: naming the variable when it is set but not a positive integer.
    """
    text = os.environ.get("UPSTOX_WATCH_GROUP_SIZE", "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"UPSTOX_WATCH_GROUP_SIZE must be a positive integer, got {text!r}")
    return int(text)


def watched_conn_id(asset_name: str) -> str | None:
    """The connection id of a watched asset's name (``upstox_events__<conn_id>``), else ``None``."""
    prefix = "upstox_events__"
    return asset_name[len(prefix) :] or None if asset_name.startswith(prefix) else None


def parse_conn_ids(value: str | Sequence[str] | None) -> list[str]:
    """Connection ids from ``"a, b"`` or a list, de-duplicated in order; empty means ``upstox_default``."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    seen: dict[str, None] = {}
    for item in items:
        name = str(item).strip()
        if name:
            seen[_check_conn_id(name)] = None
    return list(seen) or [DEFAULT_CONN_ID]


def configured_conn_ids() -> list[str]:
    """The Upstox connection ids the example DAGs serve.

    ``UPSTOX_CONN_IDS`` (environment) wins; otherwise the Airflow Variable ``upstox_conn_ids`` (also
    settable as ``AIRFLOW_VAR_UPSTOX_CONN_IDS``); otherwise ``upstox_default``. A Variable lookup that
    fails (no metadata database while parsing) falls back to the default rather than breaking the
    DAG file.
    """
    env = os.environ.get(CONN_IDS_ENV)
    if env is not None and env.strip():
        return parse_conn_ids(env)
    value: Any = os.environ.get(f"AIRFLOW_VAR_{CONN_IDS_VARIABLE.upper()}")
    if value is None:
        try:
            from airflow.sdk import Variable

            value = Variable.get(CONN_IDS_VARIABLE, default=None)
        except Exception as exc:  # no Variable backend reachable while parsing: use the default
            log.debug("Variable %s not readable (%s); using %s", CONN_IDS_VARIABLE, exc, DEFAULT_CONN_ID)
            value = None
    return parse_conn_ids(value)


def configured_sql_conn_id() -> str:
    """The store's SQL connection id for the example DAGs: ``UPSTOX_SQL_CONN_ID`` or ``upstox_db``."""
    return os.environ.get("UPSTOX_SQL_CONN_ID", "").strip() or "upstox_db"


def configured_float(name: str, default: float) -> float:
    """A positive number from the environment (e.g. ``UPSTOX_MAX_BATCH_WAIT``), else *default*.

    :raises ValueError: naming the variable when it is set but not a positive number.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {text!r}")
    return value


def configured_stop_at(default: str = "15:30") -> str | None:
    """The stream DAG's default ``stop_at``: ``UPSTOX_STOP_AT`` (``HH:MM`` India time, ``off`` for
    none), else *default* (NSE/BSE close; MCX commodity sessions run to 23:30).

    :raises ValueError: naming the variable when it is set to anything else.
    """
    text = os.environ.get("UPSTOX_STOP_AT", "").strip() or default
    if text.lower() == "off":
        return None
    try:
        parse_stop_at(text)
    except ValueError as exc:
        raise ValueError(f"UPSTOX_STOP_AT: {exc}") from None
    return text
