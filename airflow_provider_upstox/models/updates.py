"""Portfolio updates: the one shape every part of the provider passes around.

An :class:`Update` is one message of the Portfolio Stream Feed, or one row of a REST snapshot, with
where and when it was observed. Its ``data`` is the Upstox JSON object as sent, minus the deprecated
duplicate keys (``userId``, ``tradingsymbol``, ``authorizedRedirectUri``...), so unknown update types
and fields Upstox adds later are kept, never dropped. Typed views (:class:`Order`, :class:`Position`,
:class:`Holding`, :class:`GttOrder`) validate ``data`` when a consumer needs the fields.

``Update`` encodes as a JSON *array* (``msgspec`` ``array_like``), which keeps trigger event payloads,
stored by Airflow and logged at INFO by the triggerer, small.

No Airflow import here: the stream client, the store and the simulator use this module too.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal, NamedTuple, get_args

import msgspec

from airflow_provider_upstox.exceptions import InvalidUpdateError

ORDER: Final = "order"
POSITION: Final = "position"
HOLDING: Final = "holding"
GTT_ORDER: Final = "gtt_order"
#: Every update type the Portfolio Stream Feed documents, in Upstox's order.
UPDATE_TYPES: Final[tuple[str, ...]] = (ORDER, POSITION, HOLDING, GTT_ORDER)
#: What the provider subscribes to when nothing is configured (Upstox itself defaults to orders only).
DEFAULT_UPDATE_TYPES: Final[tuple[str, ...]] = UPDATE_TYPES

STREAM: Final = "stream"
SNAPSHOT: Final = "snapshot"
#: A step of ``GET /v2/order/history`` recorded by the history backfill (``docs/PROTOCOL.md`` §8).
HISTORY: Final = "history"
#: An order/GTT postback received by the webhook endpoint (``docs/PROTOCOL.md`` §7).
POSTBACK: Final = "postback"
Source = Literal["stream", "snapshot", "history", "postback"]
#: Every channel a state can come from, recorded per row (``source`` columns).
SOURCES: Final[tuple[str, ...]] = (STREAM, SNAPSHOT, HISTORY, POSTBACK)

#: Order statuses after which an order never changes again (docs/PROTOCOL.md §2).
TERMINAL_ORDER_STATUSES: Final[frozenset[str]] = frozenset(
    {"complete", "cancelled", "rejected", "cancelled after market order"}
)

#: Deprecated camelCase/legacy duplicates of snake_case fields: dropped to keep payloads small.
DEPRECATED_KEYS: Final[frozenset[str]] = frozenset(
    {"userId", "tradingsymbol", "authorizedRedirectUri", "errorCode", "propertyPath", "invalidValue"}
)

INDIA_TZ: Final = timezone(timedelta(hours=5, minutes=30), "IST")


def normalize_update_types(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Validate and de-duplicate update types, keeping the canonical order of :data:`UPDATE_TYPES`.

    Accepts a comma separated string (``"order, position"``) or an iterable. ``None`` or empty means
    :data:`DEFAULT_UPDATE_TYPES`.

    :raises ValueError: naming the unknown value(s) and the valid ones.
    """
    if value is None:
        return DEFAULT_UPDATE_TYPES
    items = value.split(",") if isinstance(value, str) else list(value)
    wanted: set[str] = set()
    unknown: list[str] = []
    for item in items:
        if not isinstance(item, str):
            unknown.append(repr(item))
            continue
        name = item.strip().lower()
        if not name:
            continue
        if name in UPDATE_TYPES:
            wanted.add(name)
        else:
            unknown.append(repr(item.strip()))
    if unknown:
        raise ValueError(
            f"unknown Upstox update type(s) {', '.join(unknown)}; valid values are {', '.join(UPDATE_TYPES)}"
        )
    if not wanted:
        return DEFAULT_UPDATE_TYPES
    return tuple(t for t in UPDATE_TYPES if t in wanted)


class Update(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One observed portfolio state.

    :param update_type: ``order``, ``position``, ``holding``, ``gtt_order`` or any other value Upstox sends.
    :param data: the Upstox object as sent, deprecated duplicate keys removed.
    :param source: where it came from: ``"stream"`` (a WebSocket message), ``"snapshot"`` (a REST
        read on connect), ``"history"`` (a step of an order's history, read by the backfill) or
        ``"postback"`` (an HTTP postback to the webhook endpoint).
    :param seq: strictly increasing across the process (see :func:`next_seq`): arrival order.
    :param connection_epoch: which connection of the stream client produced it (1, 2, ...).
    :param received_at_us: when it was observed, epoch microseconds UTC. For a snapshot row: when
        the snapshot *request began*, so that a live message received after that wins over it.
    :param account: the Upstox user id the update belongs to, when known.
    """

    update_type: str
    data: dict[str, Any]
    source: str = STREAM
    seq: int = 0
    connection_epoch: int = 0
    received_at_us: int = 0
    account: str | None = None

    @property
    def received_at(self) -> datetime:
        """``received_at_us`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.received_at_us / 1_000_000, tz=timezone.utc)

    @property
    def key(self) -> str | None:
        """Natural key of the update as text, for messages and logs (``None`` if absent)."""
        return natural_key(self.update_type, self.data)


def natural_key(update_type: str, data: dict[str, Any]) -> str | None:
    """The documented natural key of an Upstox object of *update_type* (see docs/PROTOCOL.md §2)."""
    if update_type == ORDER:
        return _str_or_none(data.get("order_id"))
    if update_type == POSITION:
        token, product = data.get("instrument_token"), data.get("product")
        return None if token is None or product is None else f"{token}:{product}"
    if update_type == HOLDING:
        return _str_or_none(data.get("isin"))
    if update_type == GTT_ORDER:
        return _str_or_none(data.get("gtt_order_id"))
    return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def strip_deprecated(data: dict[str, Any]) -> dict[str, Any]:
    """Return *data* without :data:`DEPRECATED_KEYS` (a new dict only when something is removed)."""
    if DEPRECATED_KEYS.isdisjoint(data):
        return data
    return {k: v for k, v in data.items() if k not in DEPRECATED_KEYS}


_last_seq = 0


def next_seq() -> int:
    """A strictly increasing integer, based on the wall clock in nanoseconds.

    Being clock based, sequence numbers also increase across stream client instances and trigger
    re-deferrals in one process, and (clock permitting) across processes; the store uses ``seq`` only
    as the last tie-break.
    """
    global _last_seq
    now = time.time_ns()
    _last_seq = now if now > _last_seq else _last_seq + 1
    return _last_seq


def reserve_seqs(count: int) -> int:
    """The first of *count* consecutive :func:`next_seq` values, reserved with one clock read.

    For a reader that stamps a whole chunk of frames at once; the values stay strictly increasing
    and unique across the process.
    """
    global _last_seq
    first = next_seq()
    if count > 1:
        _last_seq = first + count - 1
    return first


def now_us() -> int:
    """Current time, epoch microseconds UTC."""
    return time.time_ns() // 1000


def encode_updates(updates: Iterable[Update]) -> list[list[Any]]:
    """Updates as plain JSON-able arrays, the wire format of a batch in trigger events.

    The same arrays ``msgspec.to_builtins`` makes of an ``array_like`` :class:`Update` (its fields in
    declaration order), built without copying each ``data`` dict: ``data`` comes from JSON (a frame
    or a REST body), so it already is plain JSON, and copying it would be most of an event's cost.
    """
    return [list(_astuple(u)) for u in updates]


_astuple = msgspec.structs.astuple


def decode_updates(payload: Any) -> list[Update]:
    """Inverse of :func:`encode_updates`.

    :raises InvalidUpdateError: if *payload* is not a list of encoded updates.
    """
    try:
        return msgspec.convert(payload, list[Update])
    except msgspec.ValidationError as exc:
        raise InvalidUpdateError(f"not an encoded update batch: {exc}") from None


# --------------------------------------------------------------------------------------------
# Typed views. Field names and types follow docs/PROTOCOL.md §2; ``None`` where Upstox may send null.
# ``strict=False`` lets "1" stand for 1 as REST and stream spellings differ.
# --------------------------------------------------------------------------------------------

Number = float


class Order(msgspec.Struct, kw_only=True):
    """An order message or order-book row (key ``order_id``)."""

    order_id: str
    status: str
    user_id: str | None = None
    exchange: str | None = None
    instrument_token: str | None = None
    instrument_key: str | None = None
    trading_symbol: str | None = None
    product: str | None = None
    order_type: str | None = None
    transaction_type: str | None = None
    validity: str | None = None
    variety: str | None = None
    price: Number | None = None
    average_price: Number | None = None
    trigger_price: Number | None = None
    quantity: int | None = None
    disclosed_quantity: int | None = None
    pending_quantity: int | None = None
    filled_quantity: int | None = None
    order_ref_id: str | None = None
    exchange_order_id: str | None = None
    parent_order_id: str | None = None
    order_request_id: str | None = None
    is_amo: bool | None = None
    tag: str | None = None
    status_message: str | None = None
    status_message_raw: str | None = None
    exchange_timestamp: str | None = None
    order_timestamp: str | None = None
    guid: str | None = None
    placed_by: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.strip().lower() in TERMINAL_ORDER_STATUSES


class Position(msgspec.Struct, kw_only=True):
    """A position message or row (key ``instrument_token`` + ``product``). Full state, not a delta."""

    instrument_token: str
    product: str
    instrument_key: str | None = None
    exchange: str | None = None
    quantity: int | None = None
    multiplier: Number | None = None
    average_price: Number | None = None
    buy_price: Number | None = None
    sell_price: Number | None = None
    buy_value: Number | None = None
    sell_value: Number | None = None
    overnight_quantity: int | None = None
    overnight_buy_amount: Number | None = None
    overnight_buy_quantity: int | None = None
    overnight_sell_amount: Number | None = None
    overnight_sell_quantity: int | None = None
    day_buy_quantity: int | None = None
    day_buy_price: Number | None = None
    day_buy_value: Number | None = None
    day_sell_quantity: int | None = None
    day_sell_price: Number | None = None
    day_sell_value: Number | None = None


class Holding(msgspec.Struct, kw_only=True):
    """A holding message or row (key ``isin``). Full state."""

    isin: str
    instrument_token: str | None = None
    instrument_key: str | None = None
    exchange: str | None = None
    company_name: str | None = None
    product: str | None = None
    quantity: int | None = None
    t1_quantity: int | None = None
    average_price: Number | None = None
    haircut: Number | None = None
    collateral_type: str | None = None
    collateral_quantity: int | None = None
    collateral_update_quantity: int | None = None
    cnc_used_quantity: int | None = None


class GttRule(msgspec.Struct, kw_only=True):
    strategy: str
    status: str | None = None
    trigger_type: str | None = None
    trigger_price: Number | None = None
    transaction_type: str | None = None
    message: str | None = None
    order_id: str | None = None
    trailing_gap: Number | None = None


class GttOrder(msgspec.Struct, kw_only=True):
    """A GTT order message or row (key ``gtt_order_id``). ``created_at``/``expires_at``: epoch µs UTC."""

    gtt_order_id: str
    type: str | None = None
    exchange: str | None = None
    instrument_token: str | None = None
    quantity: int | None = None
    product: str | None = None
    created_at: int | None = None
    expires_at: int | None = None
    rules: list[GttRule] = msgspec.field(default_factory=list)


TYPED_VIEWS: Final[dict[str, type[msgspec.Struct]]] = {
    ORDER: Order,
    POSITION: Position,
    HOLDING: Holding,
    GTT_ORDER: GttOrder,
}

# The validation rules' constants (MAX_ABS_NUMBER, KEY_TEXT_FIELDS, EPOCH_FIELDS, SIGNED_QUANTITIES)
# are public because store.validation builds its C-checked twin of the typed views from them.
MAX_ABS_NUMBER = 1e13  # larger than any price, value or quantity an Indian retail account sees


def typed_view(update: Update) -> Order | Position | Holding | GttOrder:
    """Validate ``update.data`` against its type's documented fields and return the typed view.

    :raises InvalidUpdateError: unknown update type, missing key, wrong type, or absurd value
        (negative quantity, non-finite or out-of-range number), naming the field and the update.
    """
    cls = TYPED_VIEWS.get(update.update_type)
    if cls is None:
        raise InvalidUpdateError("no typed view for this update type", update_type=update.update_type)
    try:
        view = msgspec.convert(update.data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidUpdateError(str(exc), update_type=update.update_type, key=update.key) from None
    _check_ranges(view, update)
    return view  # type: ignore[return-value]


KEY_TEXT_FIELDS: Final = frozenset(
    {"order_id", "isin", "gtt_order_id", "instrument_token", "product", "status"}
)
_PLAIN_TYPES: Final = frozenset({str, bool, type(None)})
EPOCH_FIELDS: Final = ("created_at", "expires_at")


class _RangePlan(NamedTuple):
    fields: tuple[str, ...]  # every field a check can reject, in field order (the exact, slow loop)
    numbers: Callable[[Any], tuple[Any, ...]]  # int/float fields under the magnitude check
    unsigned: Callable[[Any], tuple[Any, ...]]  # int quantities that must not be negative
    keys: Callable[[Any], tuple[Any, ...]]  # str key fields that must not be blank


_RANGE_PLANS: dict[type, _RangePlan] = {}


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda _view: ()
    get = operator.attrgetter(*names)
    return get if len(names) > 1 else lambda view: (get(view),)


def _range_plan(cls: type[msgspec.Struct]) -> _RangePlan:
    """What :func:`_check_ranges` looks at for *cls* (computed once per type; performance only)."""
    plan = _RANGE_PLANS.get(cls)
    if plan is None:
        fields, numbers, unsigned, keys = [], [], [], []
        for info in msgspec.structs.fields(cls):
            types = set(get_args(info.type)) or {info.type}
            if info.name in KEY_TEXT_FIELDS or not types <= _PLAIN_TYPES:
                fields.append(info.name)
            if types <= {int, float, type(None)} and info.name not in EPOCH_FIELDS:
                numbers.append(info.name)
                if int in types and info.name.endswith("quantity") and info.name not in SIGNED_QUANTITIES:
                    unsigned.append(info.name)
            elif types <= {str, type(None)} and info.name in KEY_TEXT_FIELDS:
                keys.append(info.name)
        plan = _RangePlan(tuple(fields), _getter(numbers), _getter(unsigned), _getter(keys))
        _RANGE_PLANS[cls] = plan
    return plan


def _all_in_range(view: msgspec.Struct, plan: _RangePlan) -> bool:
    """Fast pre-check: True only if :func:`_check_ranges`'s loop would find nothing to reject."""
    numbers = [v for v in plan.numbers(view) if v is not None]
    if numbers and not (
        math.isfinite(sum(numbers)) and max(numbers) <= MAX_ABS_NUMBER and min(numbers) >= -MAX_ABS_NUMBER
    ):
        return False
    unsigned = [v for v in plan.unsigned(view) if v is not None]
    if unsigned and min(unsigned) < 0:
        return False
    return all(v is None or v.strip() for v in plan.keys(view))


def _check_ranges(view: msgspec.Struct, update: Update) -> None:
    plan = _range_plan(type(view))
    if _all_in_range(view, plan):
        return
    for field in plan.fields:
        value = getattr(view, field)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidUpdateError(
                f"{field} is not a finite number", update_type=update.update_type, key=update.key
            )
        if (
            isinstance(value, (int, float))
            and abs(value) > MAX_ABS_NUMBER
            and field not in ("created_at", "expires_at")
        ):
            raise InvalidUpdateError(
                f"{field}={value!r} is out of range", update_type=update.update_type, key=update.key
            )
        if (
            isinstance(value, int)
            and value < 0
            and field.endswith("quantity")
            and field not in SIGNED_QUANTITIES
        ):
            raise InvalidUpdateError(
                f"{field}={value!r} is negative", update_type=update.update_type, key=update.key
            )
        if (
            isinstance(value, str)
            and field in ("order_id", "isin", "gtt_order_id", "instrument_token", "product", "status")
            and not value.strip()
        ):
            raise InvalidUpdateError(f"{field} is empty", update_type=update.update_type, key=update.key)


# A short position has a negative net quantity; overnight quantity can be negative too.
SIGNED_QUANTITIES: Final = frozenset({"quantity", "overnight_quantity"})


def parse_india_time(value: str | None) -> datetime | None:
    """``YYYY-MM-DD HH:MM:SS`` in India time (no zone in the payload) as an aware UTC datetime.

    :raises ValueError: for a non-empty value in another format.
    """
    if value is None or value == "":
        return None
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=INDIA_TZ).astimezone(timezone.utc)


def epoch_us_to_utc(value: int | None) -> datetime | None:
    """Epoch microseconds (GTT ``created_at``/``expires_at``) as an aware UTC datetime."""
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1_000_000, tz=timezone.utc)
