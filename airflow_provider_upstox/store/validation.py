"""Per-update checks that keep one bad update from failing its batch, and storable reject rows.

:func:`check_envelope` and :func:`check_text` run in :func:`.rows.prepare` before the typed view:
the :class:`Update` fields around ``data`` must fit their columns, and ``data`` must be text every
backend can store (no NUL character, valid Unicode). :func:`reject_row` builds the
``upstox_rejected_updates`` row of any update, whatever it holds, so recording a rejection can
never fail the batch either.
"""

from __future__ import annotations

import operator
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final, get_args

import msgspec
import sqlalchemy as sa

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models import updates as _updates
from airflow_provider_upstox.models.updates import SOURCES, TYPED_VIEWS, Update
from airflow_provider_upstox.store import schema

#: The range of every stored epoch and timestamp: 2000-01-01 to 2100-01-01 (epoch microseconds).
MIN_EPOCH_US: Final = 946_684_800_000_000
MAX_EPOCH_US: Final = 4_102_444_800_000_000
_MAX_I64: Final = 2**63 - 1  # seq is stored in a signed BIGINT
_MAX_I32: Final = 2**31 - 1  # connection_epoch is stored in a signed INTEGER
_SOURCES: Final = frozenset(SOURCES)
#: Longest text stored in a ``Text`` column: MySQL/MariaDB ``TEXT`` holds 65,535 bytes, 4 per
#: character at worst in utf8mb4. Applied on every backend so an update is stored or rejected alike.
TEXT_LIMIT: Final = 16_383
_NUL_ESCAPED: Final = b"\\u0000"  # how a JSON encoder writes U+0000 inside a string
_JSON_ENCODE: Final = msgspec.json.Encoder().encode


def invalid(update: Update, message: str) -> InvalidUpdateError:
    """An :class:`InvalidUpdateError` naming *update* (its type and natural key)."""
    key = update.key if isinstance(update.data, dict) else None
    return InvalidUpdateError(message, update_type=update.update_type, key=key)


def check_envelope(update: Update, account: str) -> None:
    """The fields of :class:`Update` around ``data``: each must fit its column."""
    seq, received_us, epoch = update.seq, update.received_at_us, update.connection_epoch
    if type(seq) is not int or type(received_us) is not int or type(epoch) is not int:
        raise invalid(update, "seq, received_at_us and connection_epoch must be integers")
    if (
        0 <= seq <= _MAX_I64
        and MIN_EPOCH_US <= received_us <= MAX_EPOCH_US
        and 0 <= epoch <= _MAX_I32
        and update.source in _SOURCES
        and _ACCOUNTS_OK.get(account)  # type: ignore[call-overload]
    ):
        return  # the common case, in one expression; anything else takes the naming checks below
    if not 0 <= seq <= _MAX_I64:
        raise invalid(update, f"seq={seq!r} is out of range (0 to 2**63-1)")
    if not MIN_EPOCH_US <= received_us <= MAX_EPOCH_US:
        raise invalid(
            update, f"received_at_us={received_us!r} is not epoch microseconds between 2000 and 2100"
        )
    if not 0 <= epoch <= _MAX_I32:
        raise invalid(update, f"connection_epoch={epoch!r} is out of range (0 to 2**31-1)")
    if update.source not in _SOURCES:
        raise invalid(update, f"source={update.source!r} is not one of {', '.join(SOURCES)}")
    problem = account_problem(account)
    if problem is not None:
        raise invalid(update, problem)
    if type(account) is str and len(_ACCOUNTS_OK) < 1024:
        _ACCOUNTS_OK[account] = True


#: Accounts that passed :func:`account_problem` (a batch repeats one or a few; bounded).
_ACCOUNTS_OK: dict[str, bool] = {}


def account_problem(account: object) -> str | None:
    """Why *account* cannot key a row (``None`` if it can)."""
    if not isinstance(account, str):
        return f"the account is a {type(account).__name__}, not text"
    if not account.strip():
        return "the account is empty"
    if len(account) > schema.Key.length:  # type: ignore[operator]
        return f"the account is longer than {schema.Key.length} characters"
    if "\x00" in account:
        return "the account contains a NUL character (U+0000)"
    if not account.isprintable() and _not_unicode(account):
        return "the account is not valid Unicode text"
    return None


def _not_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def check_text(update: Update) -> bytes:
    """Reject data no database can store as sent: a NUL character, text that is not valid Unicode.

    One C-level JSON encoding of ``data`` finds both (an unencodable value raises; U+0000 comes out
    escaped); only a hit walks the data in Python to name the field.

    :returns: that encoding (the ``raw`` column's JSON text, so the writers need not encode it again).
    """
    data = update.data
    if not isinstance(data, dict):
        raise invalid(update, f"data is a {type(data).__name__}, not a JSON object")
    try:
        encoded = _JSON_ENCODE(data)
    except Exception as exc:  # lone surrogates, non-string keys, objects JSON has no form for
        raise invalid(update, f"data is not storable JSON text ({type(exc).__name__}: {exc})") from None
    if _NUL_ESCAPED in encoded:
        where = nul_path(data)
        if where is not None:  # else only a literal backslash followed by "u0000": harmless
            raise invalid(
                update,
                f"{where} contains a NUL character (U+0000), which PostgreSQL text and JSON cannot "
                "store; the update is rejected on every backend",
            )
    return encoded


# ------------------------------------------------------------------------------ fast typed views
#: Magnitude limit of the typed views' numbers. The rules below mirror ``models.updates``
#: (``_check_ranges``), reading its constants so the two cannot drift apart silently.
_MAX_ABS: Final = int(_updates.MAX_ABS_NUMBER)


class FastView(typing.NamedTuple):
    """A constrained twin of a typed view (see :func:`fast_view`)."""

    struct: type[msgspec.Struct]
    keys: Callable[[Any], tuple[Any, ...]]  # key text fields that must not be blank


def _constrained(name: str, tp: Any, column: sa.Column[Any] | None) -> Any:
    """*tp* (one member of a field's union) with the checks :func:`typed_view` and the store make."""
    if tp is str and column is not None:
        limit = TEXT_LIMIT if isinstance(column.type, sa.Text) else getattr(column.type, "length", None)
        return Annotated[str, msgspec.Meta(max_length=limit)] if limit else str
    if tp is float and name not in _updates.EPOCH_FIELDS:
        return Annotated[float, msgspec.Meta(ge=-_MAX_ABS, le=_MAX_ABS)]  # NaN fails both bounds
    if tp is int and name in _updates.EPOCH_FIELDS:
        return Annotated[int, msgspec.Meta(ge=MIN_EPOCH_US, le=MAX_EPOCH_US)]
    if tp is int:
        unsigned = name.endswith("quantity") and name not in _updates.SIGNED_QUANTITIES
        return Annotated[int, msgspec.Meta(ge=0 if unsigned else -_MAX_ABS, le=_MAX_ABS)]
    return tp


def _build_fast_view(update_type: str) -> FastView:
    view_type = TYPED_VIEWS[update_type]
    table = schema.STATE_TABLES[update_type]
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []  # same order as the view's fields
    keys: list[str] = []
    for info in msgspec.structs.fields(view_type):
        union = typing.get_origin(info.type) in (typing.Union, types.UnionType)
        members = get_args(info.type) if union else (info.type,)
        column = table.c.get(info.name)
        tp: Any = typing.Union.__getitem__(tuple(_constrained(info.name, m, column) for m in members))
        if info.default is not msgspec.NODEFAULT:
            fields.append((info.name, tp, info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((info.name, tp, msgspec.field(default_factory=info.default_factory)))
        else:
            fields.append((info.name, tp))  # required
        if info.name in _updates.KEY_TEXT_FIELDS and str in members:
            keys.append(info.name)
    struct = msgspec.defstruct(f"Fast{view_type.__name__}", fields, kw_only=True)
    get = operator.attrgetter(*keys)
    return FastView(struct, get if len(keys) > 1 else (lambda v: (get(v),)))


_FAST_VIEWS: Final[dict[str, FastView]] = {t: _build_fast_view(t) for t in TYPED_VIEWS}


def fast_view(update: Update) -> Any | None:
    """``update.data`` as a struct with every field of the typed view, checked in C, or ``None``.

    The twin of :func:`~airflow_provider_upstox.models.updates.typed_view` whose field types carry
    the checks as ``msgspec`` constraints: the typed view's (numbers finite and within 1e13, no
    negative quantity) and the store's (text no longer than its column, GTT epochs between 2000
    and 2100), so that one C-level ``convert`` replaces the per-field Python checks. Only blank key
    fields are checked here. It accepts nothing the exact path rejects, and its fields hold the
    same values as the typed view's; on ``None`` the exact path runs and names what is wrong
    (``tests/store/test_fast_path.py`` checks both on arbitrary input).
    """
    fast = _FAST_VIEWS.get(update.update_type)
    if fast is None:
        return None
    try:
        view = msgspec.convert(update.data, fast.struct, strict=False)
    except Exception:  # whatever it is, the exact path decides and names it
        return None
    for value in fast.keys(view):
        if value is not None and not value.strip():
            return None
    return view


def nul_path(value: Any, path: str = "") -> str | None:
    """Where the first NUL character (U+0000) in *value* is, as ``field``/``rules[0].message``/``key
    'a\\x00'`` (the key's repr); ``None`` if there is none."""
    if isinstance(value, str):
        return (path or "a value") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            if "\x00" in name:
                return f"{path + ' ' if path else ''}key {name!r}"
            found = nul_path(item, f"{path}.{name}" if path else name)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = nul_path(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def reject_row(update: Update, account: str | None, error: str, now: datetime) -> dict[str, Any]:
    """The ``upstox_rejected_updates`` row of *update*: whatever it holds, this row can be stored.

    NUL characters (PostgreSQL cannot store them) become the literal text ``\\u0000``, text that
    is not valid Unicode is replaced, and every field is cut to its column.
    """
    received = None
    if type(update.received_at_us) is int and 0 < update.received_at_us < MAX_EPOCH_US:
        received = update.received_at
    key = update.key if isinstance(update.data, dict) else None
    return {
        "account": _safe_text(account, 64),
        "update_type": _safe_text(str(update.update_type), 64),
        "natural_key": _safe_text(key, 255),
        "error": _safe_text(error, 4000),
        "data": _safe_json(update.data),
        "source": _safe_text(str(update.source), 16),
        "seq": update.seq if type(update.seq) is int and 0 <= update.seq < 2**63 else None,
        "received_at": received,
        "rejected_at": now,
    }


def _safe_text(value: object, limit: int) -> str | None:
    if value is None:
        return None
    value = (value if isinstance(value, str) else str(value)).replace("\x00", "\\u0000")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
    return value[:limit]


def _safe_json(data: Any) -> Any:
    """*data* with every string and key made storable (see :func:`_reject_row`)."""

    def clean(value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return _safe_text(value, 1 << 30)
        if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
            return value
        if depth > 50:
            return _safe_text(repr(value)[:1000], 1000)
        if isinstance(value, dict):
            return {_safe_text(str(k), 1 << 30): clean(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, depth + 1) for v in value]
        return _safe_text(repr(value)[:1000], 1000)

    try:
        cleaned = clean(data, 0)
        if not isinstance(cleaned, dict):
            cleaned = {"value": cleaned}
        msgspec.json.encode(cleaned)
    except Exception:  # the last resort must not fail the batch
        return {"repr": _safe_text(repr(data)[:10_000], 10_000)}
    return cleaned
