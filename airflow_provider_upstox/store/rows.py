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

Positions, holdings and GTT orders carry no timestamp; they are full states, so the version is just
``(received_at_us, seq)``: the newest received wins, and a snapshot row (received_at = request
start) loses to any live message received after the snapshot began.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

import sqlalchemy as sa

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import (
    GTT_ORDER,
    HOLDING,
    ORDER,
    POSITION,
    TERMINAL_ORDER_STATUSES,
    GttOrder,
    Holding,
    Order,
    Position,
    Update,
    epoch_us_to_utc,
    parse_india_time,
    typed_view,
)
from airflow_provider_upstox.store import schema

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

_ORDER_VERSION = struct.Struct(">BQQQHQQ")  # terminal, event_ts_us, filled, request id, rank, recv, seq
_STATE_VERSION = struct.Struct(">QQ")  # received_at_us, seq
assert _ORDER_VERSION.size == schema.ORDER_VERSION_LEN
assert _STATE_VERSION.size == schema.STATE_VERSION_LEN

_MIN_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01
_MAX_EPOCH_US: Final = 4_102_444_800_000_000  # 2100-01-01
_MAX_U64: Final = 2**64 - 1
_MONEY_QUANTUM: Final = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class PreparedRow:
    """One update turned into the row(s) it writes."""

    update_type: str
    key: tuple[str, ...]
    version: bytes
    row: dict[str, Any]
    event: dict[str, Any] | None = None


def money(value: float | None) -> Decimal | None:
    """A JSON float as an exact ``Decimal`` (via its shortest repr), rounded to 6 places."""
    if value is None:
        return None
    return Decimal(str(value)).quantize(_MONEY_QUANTUM)


@lru_cache(maxsize=4096)
def _india_time(value: str) -> datetime | None:
    return parse_india_time(value)


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
    if update.update_type == ORDER:
        user_id = update.data.get("user_id")
        if isinstance(user_id, str) and user_id.strip():
            return user_id
    return None


def prepare(update: Update, account: str, now: datetime, write_id: int) -> PreparedRow:
    """Validate *update* and build its row.

    :raises InvalidUpdateError: the update cannot be stored (names the field and the update).
    """
    view = typed_view(update)
    if not isinstance(update.seq, int) or not isinstance(update.received_at_us, int):
        raise _invalid(update, "seq and received_at_us must be integers")
    if not 0 <= update.seq <= _MAX_U64 or not _MIN_EPOCH_US <= update.received_at_us <= _MAX_EPOCH_US:
        raise _invalid(update, f"seq={update.seq!r} or received_at_us={update.received_at_us!r} out of range")
    base: dict[str, Any] = {
        "account": account,
        "raw": update.data,
        "source": update.source,
        "seq": update.seq,
        "connection_epoch": update.connection_epoch,
        "received_at": update.received_at,
        "revision": 1,
        "write_id": write_id,
        "first_seen_at": update.received_at,
        "updated_at": now,
    }
    if isinstance(view, Order):
        prepared = _order_row(update, view, base)
    elif isinstance(view, Position):
        fields = _fields(view, schema.positions)
        prepared = _state_row(update, base | fields, (account, view.instrument_token, view.product))
    elif isinstance(view, Holding):
        prepared = _state_row(update, base | _fields(view, schema.holdings), (account, view.isin))
    else:
        prepared = _gtt_row(update, view, base)
    _check_lengths(update, prepared.row, schema.STATE_TABLES[update.update_type])
    return prepared


@lru_cache(maxsize=16)
def _field_plan(view_type: type, table: sa.Table) -> tuple[tuple[str, bool], ...]:
    """(field, is_money) for the view fields that are columns of *table* (computed once per type)."""
    fields: tuple[str, ...] = view_type.__struct_fields__  # type: ignore[attr-defined]
    return tuple((f, isinstance(table.c[f].type, sa.Numeric)) for f in fields if f in table.c)


@lru_cache(maxsize=16)
def _max_lengths(table: sa.Table) -> dict[str, int]:
    return {c.name: c.type.length for c in table.c if getattr(c.type, "length", None)}  # type: ignore[attr-defined]


def _fields(view: Any, table: sa.Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, is_money in _field_plan(type(view), table):  # type: ignore[arg-type]
        value = getattr(view, name)
        out[name] = money(value) if is_money and value is not None else value
    return out


def _order_row(update: Update, view: Order, base: dict[str, Any]) -> PreparedRow:
    try:
        exchange_ts = _india_time(view.exchange_timestamp) if view.exchange_timestamp else None
        order_ts = _india_time(view.order_timestamp) if view.order_timestamp else None
    except ValueError as exc:
        raise _invalid(update, f"bad timestamp: {exc}") from None
    request_id = 0
    if view.order_request_id not in (None, ""):
        text = str(view.order_request_id).strip()
        if not text.isdigit() or len(text) > 18:
            raise _invalid(update, f"order_request_id={view.order_request_id!r} is not a number")
        request_id = int(text)
    event_ts = exchange_ts or order_ts
    terminal = view.is_terminal
    rank = status_rank(view.status)
    filled = view.filled_quantity or 0
    version = _ORDER_VERSION.pack(
        terminal,
        _clamp(_us(event_ts)),
        _clamp(filled),
        request_id,
        rank,
        _clamp(update.received_at_us),
        _clamp(update.seq),
    )
    row = base | _fields(view, schema.orders)
    row.update(
        exchange_timestamp=exchange_ts,
        order_timestamp=order_ts,
        is_terminal=terminal,
        event_ts=event_ts,
        status_rank=rank,
        version=version,
    )
    state = (view.status.strip().lower(), filled, request_id, _us(exchange_ts), _us(order_ts))
    event = {
        "account": base["account"],
        "order_id": view.order_id,
        "state_id": hashlib.sha1(repr(state).encode(), usedforsecurity=False).hexdigest(),
        "status": view.status,
        "filled_quantity": view.filled_quantity,
        "pending_quantity": view.pending_quantity,
        "average_price": row["average_price"],
        "order_request_id": view.order_request_id,
        "exchange_timestamp": exchange_ts,
        "order_timestamp": order_ts,
        "event_ts": event_ts,
        "status_message": view.status_message,
        "raw": update.data,
        "source": update.source,
        "seq": update.seq,
        "received_at": base["received_at"],
    }
    return PreparedRow(ORDER, (base["account"], view.order_id), version, row, event)


def _state_row(update: Update, row: dict[str, Any], key: tuple[str, ...]) -> PreparedRow:
    version = _STATE_VERSION.pack(_clamp(update.received_at_us), _clamp(update.seq))
    row["version"] = version
    return PreparedRow(update.update_type, key, version, row)


def _gtt_row(update: Update, view: GttOrder, base: dict[str, Any]) -> PreparedRow:
    for name in ("created_at", "expires_at"):
        value = getattr(view, name)
        if value is not None and not _MIN_EPOCH_US <= value <= _MAX_EPOCH_US:
            raise _invalid(update, f"{name}={value!r} is not epoch microseconds between 2000 and 2100")
    row = base | _fields(view, schema.gtt_orders)
    row.update(
        created_at=epoch_us_to_utc(view.created_at),
        expires_at=epoch_us_to_utc(view.expires_at),
        rules=update.data.get("rules") or [],
    )
    return _state_row(update, row, (base["account"], view.gtt_order_id))


def _check_lengths(update: Update, row: dict[str, Any], table: sa.Table) -> None:
    for name, length in _max_lengths(table).items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > length:
            raise _invalid(update, f"{name} is longer than {length} characters")


def _invalid(update: Update, message: str) -> InvalidUpdateError:
    return InvalidUpdateError(message, update_type=update.update_type, key=update.key)


#: Update types that have a state table.
STORED_TYPES: Final = frozenset({ORDER, POSITION, HOLDING, GTT_ORDER})
TERMINAL: Final = TERMINAL_ORDER_STATUSES
