"""Turn validated :class:`~airflow_provider_upstox.models.updates.Update` objects into table rows.

This is where the ordering rule of PROTOCOL.md section 5 is written down, as a *version*: a
fixed-width big-endian byte string per state whose bytewise order is the rule. The database only
compares ``new.version > stored.version`` (see :mod:`.upsert`), and the in-batch de-duplication
compares the same bytes, so Python and SQL can never disagree.

Order version, most significant first:

1. ``is_terminal``: a terminal status (complete, cancelled, rejected, cancelled after market order)
   is never replaced by a non-terminal one.
2. ``event_ts``: ``exchange_timestamp``, falling back to ``order_timestamp`` (one-second resolution).
3. ``filled_quantity``: fills only grow.
4. ``order_request_id`` as a number: each modify (and, we assume, each cancel) request increments it.
5. :data:`STATUS_RANK`: the lifecycle position of the status. Upstox timestamps have one-second
   resolution, so one order easily has several states in the same second with the same fill and
   request id (``put order req received`` -> ``validation pending`` -> ``open pending`` -> ``open``);
   the rank orders them. Unknown statuses rank lowest among non-terminal ones.
6. ``received_at_us``: arrival time; for a snapshot row the time the snapshot request *began*. Only
   reached when the data is otherwise identical, so a snapshot row never overwrites an identical live
   state received after the snapshot began, and a snapshot row whose *data* is newer (it was read
   later) wins over an older live state however late that live state arrived.
7. ``seq``: arrival sequence, the final tie-break.

Positions, holdings and GTT orders are full states with no timestamp. Each version ends with
``(received_at_us, seq)``, so that among states of equal *progress* the newest received wins and a
snapshot row (received_at = request start) loses to a live message received after the snapshot
began; what counts as progress comes first:

- GTT order: ``(finished rules, received_at_us, seq)``. A rule only moves from ``PENDING`` to a
  terminal status (``COMPLETED``, ``FAILED``, ``CANCELLED``) and never back, so a state with more
  finished rules is newer, however late it arrives: a stale ``PENDING`` state received after the
  ``CANCELLED`` one (in-stream reordering) is ignored.
- Position: ``(India trading date of received_at, day_buy_quantity + day_sell_quantity,
  received_at_us, seq)``. Within one trading day the day's traded quantity only grows (each fill
  adds to it); the day legs restart at the next trading day, which the date ranks first.
- Holding: ``(received_at_us, seq)``: last received wins. No field of a holding only grows (sells
  lower ``quantity``, settlement moves ``t1_quantity``), so a holding state reordered *within* the
  stream can still win over a newer one until the next message or snapshot of that holding.

Validation (:func:`prepare`, with :mod:`.validation`) rejects, per update, everything a database
would refuse, so one bad update never fails its batch: a NUL character (U+0000: PostgreSQL
``text``/``jsonb`` cannot hold it; rejected on every backend so the same update is stored or
rejected everywhere), text that is not valid Unicode, values outside a column's range (``seq`` must
fit a signed BIGINT, epochs and timestamps must lie between 2000 and 2100, money within
``Numeric(20, 6)``), and strings longer than their column (``Text`` columns:
:data:`~.validation.TEXT_LIMIT` characters, what MySQL's 64 KiB ``TEXT`` holds).
"""

from __future__ import annotations

import hashlib
import logging
import math
import operator
import struct
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
from airflow_provider_upstox.store import schema, validation
from airflow_provider_upstox.store.validation import TEXT_LIMIT, account_problem

__all__ = ["TEXT_LIMIT", "account_problem"]  # re-exported: validation lives in .validation

log = logging.getLogger(__name__)

#: Lifecycle rank of order statuses (tie-break 5 above). Within one (timestamp, fill, request id)
#: group a realistic history only moves up this list: initial placement states, then modify/cancel
#: request states (each with a new request id), their outcomes, and the working states last.
STATUS_RANK: Final[dict[str, int]] = {
    "put order req received": 1,
    "after market order req received": 2,
    "modify after market order req received": 3,
    "validation pending": 4,
    "modify validation pending": 5,
    "open pending": 6,
    "modify pending": 7,
    "cancel pending": 8,
    "modified": 9,
    "not modified": 10,
    "not cancelled": 11,
    "trigger pending": 12,
    "open": 13,
    "rejected": 20,
    "cancelled": 21,
    "cancelled after market order": 22,
    "complete": 23,
}

#: GTT rule statuses a rule never leaves (PROTOCOL.md section 2: PENDING is the only other one).
TERMINAL_GTT_RULE_STATUSES: Final[frozenset[str]] = frozenset({"COMPLETED", "FAILED", "CANCELLED"})

_ORDER_VERSION = struct.Struct(">BQQQHQQ")  # terminal, event_ts_us, filled, request id, rank, recv, seq
# Holding: (received_at_us, seq). GTT: the same 16 bytes with the finished-rule count in the top
# byte of the first word (received_at_us < 2**56), so a row written before GTT progress was ranked
# reads as "0 finished rules" and no migration is needed.
_STATE_VERSION = struct.Struct(">QQ")
# Position: (trading day << 48 | day traded quantity, received_at_us, seq).
_POSITION_VERSION = struct.Struct(">QQQ")
assert _ORDER_VERSION.size == schema.ORDER_VERSION_LEN
assert _STATE_VERSION.size == schema.STATE_VERSION_LEN
assert _POSITION_VERSION.size == schema.POSITION_VERSION_LEN

_MIN_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01
_MAX_EPOCH_US: Final = 4_102_444_800_000_000  # 2100-01-01
_MAX_U64: Final = 2**64 - 1
_MAX_U48: Final = 2**48 - 1
_INDIA_OFFSET_US: Final = 19_800_000_000  # +05:30
_DAY_US: Final = 86_400_000_000
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


@lru_cache(maxsize=256)
def _status(status: str) -> tuple[str, bool, int]:
    """*status* normalised, whether it is terminal, and its :data:`STATUS_RANK` (cached: a few
    dozen statuses exist)."""
    normal = status.strip().lower()
    return normal, normal in TERMINAL_ORDER_STATUSES, STATUS_RANK.get(normal, 0)


@lru_cache(maxsize=1024, typed=True)  # typed: True must not hit the entry of 1
def _request_id(value: str | int) -> int:
    """``order_request_id`` as a number (it counts modify/cancel requests: "1", "2"...), or -1 if
    it is not a decimal number of at most 18 digits. Cached: a handful of values repeat."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return -1
    return int(text)


def status_rank(status: str) -> int:
    """Rank of *status* in :data:`STATUS_RANK` (0 for a status Upstox may add later)."""
    return STATUS_RANK.get(status.strip().lower(), 0)


def _us(value: datetime | None) -> int:
    return 0 if value is None else int(value.timestamp()) * 1_000_000 + value.microsecond


def _clamp(value: int) -> int:
    return min(max(value, 0), _MAX_U64)


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
    if (exchange_us and not _MIN_EPOCH_US <= exchange_us <= _MAX_EPOCH_US) or (
        order_us and not _MIN_EPOCH_US <= order_us <= _MAX_EPOCH_US
    ):
        for name, us in (("exchange_timestamp", exchange_us), ("order_timestamp", order_us)):
            if us and not _MIN_EPOCH_US <= us <= _MAX_EPOCH_US:
                raise _invalid(
                    update, f"bad timestamp: {name}={getattr(view, name)!r} is not between 2000 and 2100"
                )
    request_id = 0
    if view.order_request_id:  # None and "" mean no request id
        request_id = _request_id(view.order_request_id)
        if request_id < 0:
            raise _invalid(update, f"order_request_id={view.order_request_id!r} is not a number")
    event_ts: datetime | None
    if exchange_ts is not None:
        event_ts, event_us = exchange_ts, exchange_us
    else:
        event_ts, event_us = order_ts, order_us
    status, terminal, rank = _status(view.status)
    filled = view.filled_quantity or 0
    # Every field is in range by now (validated; struct.error would reject the update otherwise).
    version = _ORDER_VERSION.pack(
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
    state_id = hashlib.sha1(repr(state).encode(), usedforsecurity=False).hexdigest()
    return PreparedRow(ORDER, (row["account"], view.order_id), version, row, state_id, raw_json)


def _state_row(
    update: Update, row: dict[str, Any], key: tuple[str, ...], raw_json: str, progress: int = 0
) -> PreparedRow:
    """Holding (and GTT, with *progress* = finished rules): ``(progress, received_at_us, seq)``."""
    version = _STATE_VERSION.pack(min(progress, 255) << 56 | update.received_at_us, update.seq)
    row["version"] = version
    return PreparedRow(update.update_type, key, version, row, None, raw_json)


def _position_row(
    update: Update, view: Position, row: dict[str, Any], key: tuple[str, ...], raw_json: str
) -> PreparedRow:
    """``(India trading date, day traded quantity, received_at_us, seq)`` (see the module docstring)."""
    day = (update.received_at_us + _INDIA_OFFSET_US) // _DAY_US
    traded = min((view.day_buy_quantity or 0) + (view.day_sell_quantity or 0), _MAX_U48)
    version = _POSITION_VERSION.pack(day << 48 | traded, update.received_at_us, update.seq)
    row["version"] = version
    return PreparedRow(POSITION, key, version, row, None, raw_json)


def finished_rules(view: GttOrder) -> int:
    """How many rules of a GTT order are in a terminal status (its progress: only ever grows)."""
    return sum(
        1 for rule in view.rules if rule.status and rule.status.strip().upper() in TERMINAL_GTT_RULE_STATUSES
    )


def _gtt_row(update: Update, view: GttOrder, row: dict[str, Any], raw_json: str) -> PreparedRow:
    for name in ("created_at", "expires_at"):
        value = getattr(view, name)
        if value is not None and not _MIN_EPOCH_US <= value <= _MAX_EPOCH_US:
            raise _invalid(update, f"{name}={value!r} is not epoch microseconds between 2000 and 2100")
    row.update(
        created_at=epoch_us_to_utc(view.created_at),
        expires_at=epoch_us_to_utc(view.expires_at),
        rules=update.data.get("rules") or [],
    )
    return _state_row(update, row, (row["account"], view.gtt_order_id), raw_json, finished_rules(view))


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
