"""Turn validated :class:`~airflow_provider_upstox.models.updates.Update` objects into table rows.

Each row carries its *version*, the ordering rule written as bytes (:mod:`.ordering`).

Validation (:func:`prepare`, with :mod:`.validation`) rejects, per update, everything a database
would refuse, so one bad update never fails its batch: a NUL character (U+0000: PostgreSQL
``text``/``jsonb`` cannot hold it; rejected on every backend so the same update is stored or
rejected everywhere), text that is not valid Unicode, values outside a column's range (``seq`` must
fit a signed BIGINT, epochs and timestamps must lie between 2000 and 2100, money within
``Numeric(20, 6)``), and strings longer than their column (``Text`` columns:
:data:`~.validation.TEXT_LIMIT` characters, what MySQL's 64 KiB ``TEXT`` holds).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

import msgspec
import sqlalchemy as sa

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import (
    GTT_ORDER,
    HOLDING,
    ORDER,
    POSITION,
    TERMINAL_ORDER_STATUSES,
    TYPED_VIEWS,
    GttOrder,
    Order,
    Position,
    Update,
    epoch_us_to_utc,
    parse_india_time,
    typed_view,
)
from airflow_provider_upstox.store import ordering, schema, validation
from airflow_provider_upstox.store.ordering import STATUS_RANK, TERMINAL_GTT_RULE_STATUSES, status_rank
from airflow_provider_upstox.store.validation import MAX_EPOCH_US, MIN_EPOCH_US, TEXT_LIMIT, account_problem

# Re-exported: the rule lives in .ordering, validation in .validation.
__all__ = ["STATUS_RANK", "TERMINAL_GTT_RULE_STATUSES", "TEXT_LIMIT", "account_problem", "status_rank"]

log = logging.getLogger(__name__)


def json_dumps(value: Any) -> str:
    """JSON for JSON columns (msgspec: fast, keeps non-ASCII as is); the engines' serializer."""
    return msgspec.json.encode(value).decode()


_MONEY_QUANTUM: Final = Decimal("0.000001")


#: Columns of ``upstox_order_events`` besides ``state_id``: each holds the value of the order row's
#: column of the same name (the event is the order's state as that update showed it).
EVENT_ROW_COLUMNS: Final = tuple(c.name for c in schema.order_events.c if c.name != "state_id")
assert set(EVENT_ROW_COLUMNS) <= set(schema.orders.c.keys())
_event_values: Final = operator.itemgetter(*EVENT_ROW_COLUMNS)


@dataclass(slots=True)
class PreparedRow:
    """One update turned into the row(s) it writes (built once per update, never changed after).

    Not frozen: a frozen dataclass's ``__init__`` costs a microsecond more per update, on the hot
    path of ``apply()``.
    """

    update_type: str
    key: tuple[str, ...]
    version: bytes
    row: dict[str, Any]
    #: Orders: the id of the state the update shows (the ``upstox_order_events`` key); else ``None``.
    state_id: str | None = None
    #: ``raw`` (and the event's ``raw``) as JSON text, encoded once by validation for the writers.
    raw_json: str | None = None

    @property
    def event(self) -> dict[str, Any] | None:
        """The ``upstox_order_events`` row of an order update (``None`` for other types)."""
        if self.state_id is None:
            return None
        event = dict(zip(EVENT_ROW_COLUMNS, _event_values(self.row), strict=True))
        event["state_id"] = self.state_id
        return event


def money(value: float | None) -> Decimal | None:
    """A JSON float as an exact ``Decimal`` (via its shortest repr), rounded to 6 places."""
    if value is None:
        return None
    cached = _MONEY.get(value)
    if cached is not None and value:  # 0.0 and -0.0 are equal as keys but not as Decimals
        return cached
    if not value:
        return _NEGATIVE_ZERO if math.copysign(1.0, value) < 0 else _ZERO
    result = Decimal(repr(value)).quantize(_MONEY_QUANTUM)
    if value:
        if len(_MONEY) >= 8192:
            _MONEY.clear()
        _MONEY[value] = result  # prices repeat a lot within a stream; a Decimal is immutable
    return result


_MONEY: dict[float, Decimal] = {}
_ZERO: Final = Decimal("0.000000")
_NEGATIVE_ZERO: Final = Decimal("-0.000000")


@lru_cache(maxsize=4096)
def _india_time(value: str | None) -> tuple[datetime | None, int]:
    """An India-time string as (aware UTC datetime, epoch µs); (None, 0) when absent. Cached."""
    if not value:
        return None, 0
    parsed = parse_india_time(value)
    return parsed, _us(parsed)


def _us(value: datetime | None) -> int:
    return 0 if value is None else int(value.timestamp()) * 1_000_000 + value.microsecond


def resolve_account(update: Update, account: str | None) -> str | None:
    """Account of *update*: ``Update.account``, else the caller's *account*, else an order's ``user_id``."""
    if update.account:
        return update.account
    if account:
        return account
    if update.update_type == ORDER and isinstance(update.data, dict):
        user_id = update.data.get("user_id")
        if isinstance(user_id, str) and user_id.strip():
            return user_id
    return None


def prepare(update: Update, account: str, now: datetime, write_id: int) -> PreparedRow:
    """Validate *update* and build its row.

    This runs once per update on the hot path of ``apply()``, so per-type work (which fields are
    columns, which are money, which have a length limit) is planned once per type (:func:`_plan`).

    :raises InvalidUpdateError: the update cannot be stored (names the field and the update). Any
        other error while reading the update is raised as one too: a batch must never fail
        because of one update's content.
    """
    try:
        return _prepare(update, account, now, write_id)
    except InvalidUpdateError:
        raise
    except Exception as exc:  # pure code, no I/O: whatever breaks here is about this update's data
        log.warning("Unexpected error preparing %s %r", update.update_type, update.key, exc_info=True)
        raise _invalid(update, f"cannot be stored ({type(exc).__name__}: {exc})") from None


def _prepare(update: Update, account: str, now: datetime, write_id: int) -> PreparedRow:
    validation.check_envelope(update, account)
    raw_json = validation.check_text(update).decode()
    # The C-level constrained twin of the typed view checks ranges and column lengths; only what it
    # refuses goes through the exact (Python) checks, which name the field.
    view: Any = validation.fast_view(update)
    exact = view is None
    if exact:
        view = typed_view(update)
    received_at = update.received_at
    update_type = update.update_type
    plan = _plan(update_type, schema.STATE_TABLES[update_type])
    row = _fields(view, plan)  # a new dict: the view's columns, then the bookkeeping columns
    row.update(
        account=account,
        raw=update.data,
        source=update.source,
        seq=update.seq,
        connection_epoch=update.connection_epoch,
        received_at=received_at,
        revision=1,
        write_id=write_id,
        first_seen_at=received_at,
        updated_at=now,
    )
    if update_type == ORDER:
        prepared = _order_row(update, view, row, raw_json)
    elif update_type == POSITION:
        prepared = _position_row(update, view, row, (account, view.instrument_token, view.product), raw_json)
    elif update_type == HOLDING:
        prepared = _state_row(update, row, (account, view.isin), raw_json)
    else:
        prepared = _gtt_row(update, view, row, raw_json)
    if exact:
        _check_lengths(update, prepared.row, plan)
    return prepared


@dataclass(frozen=True, slots=True)
class _Plan:
    """Per (view type, table): how a view becomes row values (computed once)."""

    all_columns: bool  # every view field is a column: msgspec.structs.asdict() is the row
    columns: tuple[str, ...]  # view fields that are columns (when not all_columns)
    money: tuple[str, ...]  # Numeric columns: float -> Decimal
    lengths: tuple[tuple[int, Callable[[dict[str, Any]], tuple[Any, ...]]], ...]  # limit, values getter
    limits: tuple[tuple[str, int], ...]  # (column, max length): the exact, slow check


@lru_cache(maxsize=16)
def _plan(update_type: str, table: sa.Table) -> _Plan:
    # The typed view and its constrained twin (validation.fast_view) have the same fields.
    fields: tuple[str, ...] = TYPED_VIEWS[update_type].__struct_fields__  # type: ignore[attr-defined]
    columns = tuple(f for f in fields if f in table.c)
    money_cols = tuple(f for f in columns if isinstance(table.c[f].type, sa.Numeric))
    limits = tuple(
        (c.name, TEXT_LIMIT if isinstance(c.type, sa.Text) else c.type.length)  # type: ignore[attr-defined]
        for c in table.c
        if getattr(c.type, "length", None) or isinstance(c.type, sa.Text)
    )
    by_length: dict[int, list[str]] = {}
    for name, length in limits:
        by_length.setdefault(length, []).append(name)
    getters = tuple((length, _values_getter(names)) for length, names in sorted(by_length.items()))
    return _Plan(len(columns) == len(fields), columns, money_cols, getters, limits)


def _values_getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    get = operator.itemgetter(*names)
    return get if len(names) > 1 else lambda row: (get(row),)


def _fields(view: Any, plan: _Plan) -> dict[str, Any]:
    if plan.all_columns:
        out = msgspec.structs.asdict(view)
    else:
        out = {name: getattr(view, name) for name in plan.columns}
    cache = _MONEY
    for name in plan.money:
        value = out[name]
        if value is not None:
            # The cache inline: a function call per money field is a tenth of prepare().
            decimal = cache.get(value)
            out[name] = decimal if decimal is not None and value else money(value)
    return out


def _order_row(update: Update, view: Order, row: dict[str, Any], raw_json: str) -> PreparedRow:
    try:
        exchange_ts, exchange_us = _india_time(view.exchange_timestamp)
        order_ts, order_us = _india_time(view.order_timestamp)
    except (ValueError, OverflowError) as exc:  # OverflowError: year 1 India time is year 0 in UTC
        raise _invalid(update, f"bad timestamp: {exc}") from None
    if (exchange_us and not MIN_EPOCH_US <= exchange_us <= MAX_EPOCH_US) or (
        order_us and not MIN_EPOCH_US <= order_us <= MAX_EPOCH_US
    ):
        for name, us in (("exchange_timestamp", exchange_us), ("order_timestamp", order_us)):
            if us and not MIN_EPOCH_US <= us <= MAX_EPOCH_US:
                raise _invalid(
                    update, f"bad timestamp: {name}={getattr(view, name)!r} is not between 2000 and 2100"
                )
    request_id = 0
    if view.order_request_id:  # None and "" mean no request id
        request_id = ordering.request_number(view.order_request_id)
        if request_id < 0:
            raise _invalid(update, f"order_request_id={view.order_request_id!r} is not a number")
    event_ts: datetime | None
    if exchange_ts is not None:
        event_ts, event_us = exchange_ts, exchange_us
    else:
        event_ts, event_us = order_ts, order_us
    status, terminal, rank = ordering.status_info(view.status)
    filled = view.filled_quantity or 0
    # Every field is in range by now (validated; struct.error would reject the update otherwise).
    version = ordering.order_version(
        terminal, event_us, filled, request_id, rank, update.received_at_us, update.seq
    )
    row.update(
        exchange_timestamp=exchange_ts,
        order_timestamp=order_ts,
        is_terminal=terminal,
        event_ts=event_ts,
        status_rank=rank,
        version=version,
    )
    state = (status, filled, request_id, exchange_us, order_us)
    state_id = ordering.order_state_id(state)
    return PreparedRow(ORDER, (row["account"], view.order_id), version, row, state_id, raw_json)


def _state_row(
    update: Update, row: dict[str, Any], key: tuple[str, ...], raw_json: str, progress: int = 0
) -> PreparedRow:
    """Holding (and GTT, with *progress* = finished rules): ``(progress, received_at_us, seq)``."""
    version = ordering.state_version(update.received_at_us, update.seq, progress)
    row["version"] = version
    return PreparedRow(update.update_type, key, version, row, None, raw_json)


def _position_row(
    update: Update, view: Position, row: dict[str, Any], key: tuple[str, ...], raw_json: str
) -> PreparedRow:
    """``(India trading date, day traded quantity, received_at_us, seq)`` (see the module docstring)."""
    traded = (view.day_buy_quantity or 0) + (view.day_sell_quantity or 0)
    version = ordering.position_version(update.received_at_us, traded, update.seq)
    row["version"] = version
    return PreparedRow(POSITION, key, version, row, None, raw_json)


def _gtt_row(update: Update, view: GttOrder, row: dict[str, Any], raw_json: str) -> PreparedRow:
    for name in ("created_at", "expires_at"):
        value = getattr(view, name)
        if value is not None and not MIN_EPOCH_US <= value <= MAX_EPOCH_US:
            raise _invalid(update, f"{name}={value!r} is not epoch microseconds between 2000 and 2100")
    row.update(
        created_at=epoch_us_to_utc(view.created_at),
        expires_at=epoch_us_to_utc(view.expires_at),
        rules=update.data.get("rules") or [],
    )
    return _state_row(
        update, row, (row["account"], view.gtt_order_id), raw_json, ordering.finished_rules(view)
    )


def _check_lengths(update: Update, row: dict[str, Any], plan: _Plan) -> None:
    try:
        # Fast path: one C-level max() per distinct limit; any surprise falls to the exact loop.
        if all(max(map(len, filter(None, get(row))), default=0) <= length for length, get in plan.lengths):
            return
    except (TypeError, KeyError):
        pass
    for name, length in plan.limits:
        value = row.get(name)
        if isinstance(value, str) and len(value) > length:
            raise _invalid(update, f"{name} is longer than {length} characters")


_invalid = validation.invalid


#: Update types that have a state table.
STORED_TYPES: Final = frozenset({ORDER, POSITION, HOLDING, GTT_ORDER})
TERMINAL: Final = TERMINAL_ORDER_STATUSES
