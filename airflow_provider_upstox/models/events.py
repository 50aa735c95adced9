"""The trigger -> operator contract: what ``UpstoxPortfolioStreamTrigger`` tells its consumers.

Every trigger event payload is one of four ``msgspec`` structs, tagged by ``status``:

* :class:`BatchEvent` (``"batch"``): updates to persist, with the account they belong to;
* :class:`IdleEvent` (``"idle"``): deferral mode only, no update for ``idle_timeout`` seconds;
* :class:`TokenWaitEvent` (``"token_wait"``): Upstox refused the access token; the stream waits for
  a new token in the connection (see :mod:`airflow_provider_upstox.triggers.token_wait`);
* :class:`ErrorEvent` (``"error"``): the stream failed; its :class:`ErrorKind` says whether
  re-deferring or retrying can help (:attr:`ErrorKind.fatal`).

The trigger builds a struct and sends :func:`encode_event` of it; the continuous operator and the
AssetWatcher consumer (which finds the same payload under an asset event's ``extra["payload"]``)
call :func:`decode_event` and dispatch on the struct's type. Nothing else reads or writes the
payload's keys.

The payload is plain JSON because Airflow stores it (a deferred task's ``next_kwargs``, an asset
event's ``extra``) in JSON columns and the triggerer logs it at INFO: it holds no secret, only an
account id, counters, updates and an exception's redacted text. Updates travel as JSON arrays (see
:func:`~airflow_provider_upstox.models.updates.encode_updates`), which keeps a batch small.

A group watcher (:mod:`airflow_provider_upstox.triggers.portfolio_group`) sends the payloads of its
members together, ``{"status": "group", "members_zlib": "<base64 of the zlib-compressed JSON array
of member payloads>"}`` (:func:`encode_group`, read back by :func:`group_members`): one string,
because Airflow parses, validates and re-serializes every nested value of an asset event's
``extra`` each time the persist task reads it (API server and task SDK alike), and a string is one
value; compressed, because the triggerer's supervisor reads its runner's log socket 4 KiB per turn
of its loop and every event is logged whole, so the bytes of the events are what bounds how many
accounts one triggerer can stream (``docs/ARCHITECTURE.md``). Events of earlier versions (members
as a JSON string, or as a nested list) still read.

The wire shape is the one the provider has always sent, so asset events already queued in the
metadata database by an earlier version decode too (their extra ``fatal`` key is ignored: fatality
is a property of the kind now, not a flag that could disagree with it).

No Airflow import here.
"""

from __future__ import annotations

import base64
import binascii
import enum
import zlib
from typing import Any, Final, TypeAlias

import msgspec

from airflow_provider_upstox.exceptions import (
    UpstoxAPIError,
    UpstoxAuthenticationError,
    UpstoxError,
    UpstoxStreamError,
    UpstoxTransportError,
    redact_url,
)
from airflow_provider_upstox.models.updates import Update, encode_updates

#: Longest exception text an :class:`ErrorEvent` carries (events are logged and stored).
MAX_MESSAGE_CHARS: Final = 500


class InvalidEventError(UpstoxError, ValueError):
    """A payload is not an event of :class:`UpstoxPortfolioStreamTrigger` (foreign or damaged)."""


class ErrorKind(str, enum.Enum):  # not StrEnum: Python 3.10 is supported
    """What failed, as sent in an error event's ``error_type``: exactly the values the trigger sends."""

    #: Upstox refused the access token (401/403, ``UDAPI100050``): fatal until the token is replaced.
    #: The trigger now reports a refusal as a :class:`TokenWaitEvent` and waits; this kind remains
    #: for events queued by earlier versions.
    AUTHENTICATION = "authentication"
    #: Anything that is not an Upstox failure: a missing or invalid connection, a bug. Fatal.
    CONFIGURATION = "configuration"
    #: A REST call answered with another error (rate limit, 5xx, malformed answer): transient.
    API = "api"
    #: No HTTP answer (timeout, refused connection): transient.
    TRANSPORT = "transport"
    #: The portfolio stream WebSocket failed: transient.
    STREAM = "stream"

    def __str__(self) -> str:
        return str(self.value)

    @property
    def fatal(self) -> bool:
        """No amount of retrying soon can fix it: a person must change the token or the connection."""
        return self in _FATAL_KINDS

    @classmethod
    def of(cls, exc: BaseException) -> ErrorKind:
        """The kind of *exc* (the most specific class wins: a refused token is also an API error)."""
        if isinstance(exc, UpstoxAuthenticationError):
            return cls.AUTHENTICATION
        if isinstance(exc, UpstoxStreamError):
            return cls.STREAM
        if isinstance(exc, UpstoxTransportError):
            return cls.TRANSPORT
        if isinstance(exc, UpstoxAPIError):
            return cls.API
        return cls.CONFIGURATION


_FATAL_KINDS: Final = frozenset({ErrorKind.AUTHENTICATION, ErrorKind.CONFIGURATION})


class EventStats(msgspec.Struct, kw_only=True):
    """A few counters of the stream behind an event, for logs and dashboards (not for decisions).

    A small selection of the stream client's ``StreamStats`` plus the trigger's hand-offs and lag.
    Defaults let an event that carries fewer counters (older versions, tests) decode.
    """

    #: which connection of the stream client produced the event (1, 2, ...)
    connection: int = 0
    #: how many trigger instances have taken the open stream over
    handoffs: int = 0
    messages: int = 0
    reconnects: int = 0
    decode_errors: int = 0
    #: updates waiting in the stream client's buffer
    pending: int = 0
    #: batch events: how long the oldest live update of the batch waited, milliseconds
    lag_ms: float | None = None


class BatchEvent(msgspec.Struct, tag_field="status", tag="batch", kw_only=True):
    """Updates to persist, oldest first. ``account``: the Upstox user id, when known."""

    updates: list[Update]
    account: str | None = None
    stats: EventStats = msgspec.field(default_factory=EventStats)


class IdleEvent(msgspec.Struct, tag_field="status", tag="idle", kw_only=True):
    """No update since ``idle_since_us`` (epoch µs UTC): a chance to evaluate stop conditions."""

    idle_since_us: int
    account: str | None = None
    stats: EventStats = msgspec.field(default_factory=EventStats)


class ErrorEvent(msgspec.Struct, tag_field="status", tag="error", kw_only=True):
    """The stream failed. ``exception`` is the class name, ``message`` its redacted, bounded text."""

    kind: ErrorKind = msgspec.field(name="error_type")
    exception: str
    message: str
    account: str | None = None

    @property
    def fatal(self) -> bool:
        return self.kind.fatal

    @classmethod
    def from_exception(cls, exc: BaseException, account: str | None) -> ErrorEvent:
        """The event for *exc*, its text redacted (no stream URL credential) and bounded."""
        return cls(
            kind=ErrorKind.of(exc),
            exception=type(exc).__name__,
            message=exception_text(exc),
            account=account,
        )


class TokenWaitEvent(msgspec.Struct, tag_field="status", tag="token_wait", kw_only=True):
    """Upstox refused the access token: the stream waits until the connection holds another one.

    One *refusal episode* per refused token: it starts at ``since_us`` (epoch µs UTC) and ends when
    the stream is connected again. Meanwhile nothing is sent to Upstox with the refused token except
    a rare probe (the last one at ``probed_at_us``; ``probes`` made since the refusal). Sent when an
    episode starts and, in deferral mode, as a heartbeat while it lasts; the continuous operator
    passes it back to its next trigger (``token_wait``), so the episode survives re-deferrals.

    ``refused_fingerprint`` tells the refused token from a new one: 16 hex digits of its SHA-256,
    not a secret (see ``UpstoxHook.atoken_fingerprint``). ``message`` is the refusal's redacted text.
    """

    refused_fingerprint: str | None
    since_us: int
    probed_at_us: int
    probes: int = 0
    message: str = ""
    account: str | None = None

    @property
    def episode(self) -> str:
        """Identifies the episode: the same refused token since the same moment."""
        return f"{self.refused_fingerprint}@{self.since_us}"


#: Every event the trigger sends.
StreamEvent: TypeAlias = BatchEvent | IdleEvent | TokenWaitEvent | ErrorEvent


def exception_text(exc: BaseException) -> str:
    """Exception text for events and logs: redacted and bounded (our exceptions carry no secrets)."""
    return redact_url(str(exc))[:MAX_MESSAGE_CHARS]


def encode_event(event: StreamEvent) -> dict[str, Any]:
    """The JSON payload of *event* for a ``TriggerEvent``.

    A batch's updates are encoded by :func:`encode_updates` (arrays that share the updates' ``data``
    dicts) instead of ``msgspec.to_builtins``, which would copy every dict once more: most of the
    cost of an event.
    """
    if isinstance(event, BatchEvent):
        payload: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(event, updates=[]))
        payload["updates"] = encode_updates(event.updates)
        return payload
    return msgspec.to_builtins(event)  # type: ignore[no-any-return]


def decode_event(payload: Any) -> StreamEvent:
    """The event a payload of :func:`encode_event` holds (also the shape earlier versions sent).

    :raises InvalidEventError: not a dict, no or an unknown ``status``, a missing or mistyped field
        (the message names it and the path, never a value).
    """
    try:
        event: StreamEvent = msgspec.convert(payload, StreamEvent)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise InvalidEventError(f"not an Upstox portfolio stream event: {exc}") from None
    return event


#: ``status`` of a group watcher's event.
GROUP_STATUS: Final = "group"


#: Key of a group event's compressed members (see :func:`encode_group`).
PACKED_MEMBERS: Final = "members_zlib"
#: Bound on a group event's members once decompressed: an event is one batch of a few thousand
#: updates at most, so anything larger is not an event this provider sent.
MAX_MEMBERS_BYTES: Final = 64 * 1024 * 1024


def encode_group(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The payload of a group watcher's event: its members' payloads (each of :func:`encode_event`
    plus ``conn_id``) as ONE string, their JSON array compressed (zlib level 1) in base64.

    Nested, a group event of 48 updates is thousands of JSON values, each parsed, validated by
    pydantic and encoded again by the API server and parsed again by the task SDK on every read of
    the asset's events (measured: the task SDK alone 0.49 ms per such event, 0.07 ms as a string;
    the API server spent about half of its CPU on these reads at 300 accounts). Uncompressed, the
    triggerer's "Trigger fired event" log lines of 500 accounts (~40 KB per group event) were more
    than its supervisor reads from the runner's log socket, whose writes then stalled every stream
    of the runner: updates reached the store 14-28 s late at 500 accounts (p50-p99), 49-94 s at
    1,000. The payload holds no secret, so nothing is hidden from Airflow's secrets masker.
    """
    packed = zlib.compress(msgspec.json.encode(members), 1)
    return {"status": GROUP_STATUS, PACKED_MEMBERS: base64.b64encode(packed).decode("ascii")}


def _unpack_members(packed: Any) -> Any:
    """The JSON value of a group event's compressed members.

    :raises InvalidEventError: not base64 of zlib data, larger than :data:`MAX_MEMBERS_BYTES` once
        decompressed, or not JSON.
    """
    if not isinstance(packed, str):
        raise InvalidEventError(f"a group event whose {PACKED_MEMBERS} is not a string")
    try:
        inflater = zlib.decompressobj()
        encoded = inflater.decompress(base64.b64decode(packed, validate=True), MAX_MEMBERS_BYTES)
    except (binascii.Error, ValueError, zlib.error):
        raise InvalidEventError(f"a group event whose {PACKED_MEMBERS} is not base64 of zlib data") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise InvalidEventError(
            f"a group event whose {PACKED_MEMBERS} is truncated or over {MAX_MEMBERS_BYTES} bytes unpacked"
        )
    try:
        return msgspec.json.decode(encoded)
    except msgspec.DecodeError:
        raise InvalidEventError("a group event whose members are not JSON") from None


def group_members(payload: Any) -> list[Any] | None:
    """The member payloads of a group event, or ``None`` if *payload* is not one.

    Also reads what earlier versions sent: the members as one JSON string, or as a nested list.

    :raises InvalidEventError: a group event whose members are not a (JSON) list.
    """
    if not isinstance(payload, dict) or payload.get("status") != GROUP_STATUS:
        return None
    if PACKED_MEMBERS in payload:
        members = _unpack_members(payload[PACKED_MEMBERS])
    else:
        members = payload.get("members")
    if isinstance(members, str):
        try:
            members = msgspec.json.decode(members)
        except msgspec.DecodeError:
            raise InvalidEventError("a group event whose members are not JSON") from None
    if not isinstance(members, list):
        raise InvalidEventError("a group event without a list of members")
    return members
