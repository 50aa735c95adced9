"""The ordering rule of ``docs/PROTOCOL.md`` §5, written down as a *version* per state.

This is where the ordering rule of ``docs/PROTOCOL.md`` §5 is written down, as a *version*: a
fixed-width big-endian byte string per state whose bytewise order is the rule. The database only
compares ``new.version > stored.version`` (see :mod:`.upsert`), and the in-batch de-duplication
(:mod:`.batch`) compares the same bytes, so Python and SQL can never disagree.

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
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache
from typing import Final

from airflow_provider_upstox.models.updates import TERMINAL_ORDER_STATUSES, GttOrder
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

#: GTT rule statuses a rule never leaves (``docs/PROTOCOL.md`` §2: PENDING is the only other one).
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

_MAX_U48: Final = 2**48 - 1
_INDIA_OFFSET_US: Final = 19_800_000_000  # +05:30
_DAY_US: Final = 86_400_000_000


@lru_cache(maxsize=256)
def status_info(status: str) -> tuple[str, bool, int]:
    """*status* normalised, whether it is terminal, and its :data:`STATUS_RANK` (cached: a few
    dozen statuses exist)."""
    normal = status.strip().lower()
    return normal, normal in TERMINAL_ORDER_STATUSES, STATUS_RANK.get(normal, 0)


@lru_cache(maxsize=1024, typed=True)  # typed: True must not hit the entry of 1
def request_number(value: str | int) -> int:
    """``order_request_id`` as a number (it counts modify/cancel requests: "1", "2"...), or -1 if
    it is not a decimal number of at most 18 digits. Cached: a handful of values repeat."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return -1
    return int(text)


def status_rank(status: str) -> int:
    """Rank of *status* in :data:`STATUS_RANK` (0 for a status Upstox may add later)."""
    return STATUS_RANK.get(status.strip().lower(), 0)


def finished_rules(view: GttOrder) -> int:
    """How many rules of a GTT order are in a terminal status (its progress: only ever grows)."""
    return sum(
        1 for rule in view.rules if rule.status and rule.status.strip().upper() in TERMINAL_GTT_RULE_STATUSES
    )


def order_version(
    terminal: bool, event_us: int, filled: int, request_id: int, rank: int, received_us: int, seq: int
) -> bytes:
    """An order state's version (every field in range: validated before)."""
    return _ORDER_VERSION.pack(terminal, event_us, filled, request_id, rank, received_us, seq)


def position_version(received_us: int, traded: int, seq: int) -> bytes:
    """``(India trading date, day traded quantity, received_at_us, seq)``."""
    day = (received_us + _INDIA_OFFSET_US) // _DAY_US
    return _POSITION_VERSION.pack(day << 48 | min(traded, _MAX_U48), received_us, seq)


def state_version(received_us: int, seq: int, progress: int = 0) -> bytes:
    """Holding (and GTT, with *progress* = finished rules): ``(progress, received_at_us, seq)``."""
    return _STATE_VERSION.pack(min(progress, 255) << 56 | received_us, seq)


@lru_cache(maxsize=4096)
def order_state_id(state: tuple[str, int, int, int, int]) -> str:
    """The id of an order state ``(status, filled, request id, exchange_us, order_us)``: the key of
    its ``upstox_order_events`` row (sha1 hex). Cached: orders of one second share states."""
    return hashlib.sha1(repr(state).encode(), usedforsecurity=False).hexdigest()
