"""The notifier webhook: Upstox POSTs a newly approved access token here (``docs/PROTOCOL.md`` §6).

Upstox signs nothing and the endpoint must accept unauthenticated POSTs, so it defends itself, each
check cheaper than the next, and writes nothing until every one has passed:

1. an unguessable key in the path (``keys.notifier_key``; a wrong key is a 404, throttled by its own
   bucket so a flood of guesses cannot starve real deliveries);
2. ``Content-Type: application/json`` (415), at most :data:`MAX_BODY` bytes (413), valid JSON (400);
3. the payload's shape: ``message_type`` ``access_token``, ``token_type`` Bearer, strings and epoch
   milliseconds where documented, ``expires_at`` in the future, ``issued_at`` not in the future (422);
4. a rate limit on the well-formed deliveries that passed 1-3 (429): the next checks cost a DB
   read and a call to Upstox, so a flood cannot turn into either;
5. ``client_id`` and ``user_id`` naming a configured connection (several accounts may share one
   app: ``user_id`` routes), which must be writable (404/409);
6. ``issued_at`` newer than the connection's current token (409);
7. the token itself: the profile read with it must name the same user (403);

then the token is written (re-checking 6 inside the transaction). The answer is a small JSON.
Nothing here logs or returns the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

from airflow_provider_upstox.client.login import aget_profile_with_token
from airflow_provider_upstox.exceptions import UpstoxError, is_token_refusal
from airflow_provider_upstox.hooks.upstox import login_endpoint
from airflow_provider_upstox.plugins import connections as store

log = logging.getLogger(__name__)

MAX_BODY: Final = 8 * 1024
_CLOCK_SKEW_MS: Final = 5 * 60 * 1000


class Rejected(Exception):  # a refusal, not a failure
    """A delivery refused with an HTTP status and a message safe to show and log."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class TokenBucket:
    """``capacity`` requests at once, refilled at ``rate`` per second. Not thread-safe: one event loop."""

    capacity: float
    rate: float
    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.capacity
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class Delivery:
    """A validated notifier payload. ``repr`` hides the token."""

    client_id: str
    user_id: str
    access_token: str = field(repr=False)
    issued_at: int
    expires_at: int


def _epoch_ms(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Rejected(422, f"'{name}' must be epoch milliseconds")
    text = str(value).strip()
    if not text.isdigit() or len(text) > 15:
        raise Rejected(422, f"'{name}' must be epoch milliseconds")
    return int(text)


def _text(payload: dict[str, Any], name: str, limit: int) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise Rejected(422, f"'{name}' must be a non-empty string of at most {limit} characters")
    return value.strip()


def parse_delivery(payload: Any, now_ms: int | None = None) -> Delivery:
    """Strictly check a decoded notifier payload (§6). Pure.

    :raises Rejected: 422 with the first problem found.
    """
    if not isinstance(payload, dict):
        raise Rejected(422, "the payload must be a JSON object")
    if payload.get("message_type") != "access_token":
        raise Rejected(422, "'message_type' must be 'access_token'")
    if str(payload.get("token_type", "Bearer")).lower() != "bearer":
        raise Rejected(422, "'token_type' must be 'Bearer'")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    delivery = Delivery(
        client_id=_text(payload, "client_id", 100),
        user_id=_text(payload, "user_id", 50),
        access_token=_text(payload, "access_token", 4096),
        issued_at=_epoch_ms(payload, "issued_at"),
        expires_at=_epoch_ms(payload, "expires_at"),
    )
    if delivery.issued_at > now + _CLOCK_SKEW_MS:
        raise Rejected(422, "'issued_at' is in the future")
    if delivery.expires_at <= now:
        raise Rejected(422, "the token has already expired ('expires_at')")
    return delivery


def route(delivery: Delivery, candidates: list[store.UpstoxConnection]) -> list[store.UpstoxConnection]:
    """The connections this delivery is for: same app (``client_id``), same expected account.

    :raises Rejected: none (404), or only read-only ones (409).
    """
    same_app = [c for c in candidates if c.client_id and c.client_id == delivery.client_id]
    if not same_app:
        raise Rejected(404, "no upstox connection is configured for this client_id")
    targets = [c for c in same_app if c.expected_user and c.expected_user == delivery.user_id]
    if not targets:
        raise Rejected(404, "no upstox connection of this app expects this user_id")
    writable = [c for c in targets if c.read_only_reason is None]
    if not writable:
        raise Rejected(409, f"connection {targets[0].conn_id!r} is {targets[0].read_only_reason}")
    if all(delivery.issued_at <= c.issued_at() for c in writable):
        raise Rejected(409, "the connection already holds a token issued at or after this one")
    return [c for c in writable if delivery.issued_at > c.issued_at()]


async def verify_with_profile(delivery: Delivery, conn: store.UpstoxConnection) -> None:
    """Read the profile with the delivered token; the user must be the one the payload names.

    :raises Rejected: 403 refused or another user, 502 Upstox unreachable.
    """
    base_url, timeout, verify = login_endpoint(conn.conn_id, conn.host, conn.port, conn.extra)
    try:
        profile = await aget_profile_with_token(
            base_url, delivery.access_token, timeout=min(timeout, 10.0), verify=verify
        )
    except UpstoxError as exc:
        if is_token_refusal(exc):
            raise Rejected(403, "Upstox refuses the delivered token") from None
        raise Rejected(502, f"could not verify the token with Upstox: {type(exc).__name__}") from None
    if str(profile.get("user_id") or profile.get("userId") or "") != delivery.user_id:
        raise Rejected(403, "the delivered token belongs to another user")


async def _verified(
    delivery: Delivery, targets: list[store.UpstoxConnection]
) -> list[store.UpstoxConnection]:
    """The targets whose Upstox (one profile read per distinct endpoint) accepts the token as the user's.

    :raises Rejected: no endpoint accepted it (the first refusal).
    """
    outcome: dict[tuple[str, float, bool], Rejected | None] = {}
    for conn in targets:
        endpoint = login_endpoint(conn.conn_id, conn.host, conn.port, conn.extra)
        if endpoint not in outcome:
            try:
                await verify_with_profile(delivery, conn)
                outcome[endpoint] = None
            except Rejected as exc:
                outcome[endpoint] = exc
    verified = [c for c in targets if outcome[login_endpoint(c.conn_id, c.host, c.port, c.extra)] is None]
    if not verified:
        raise next(exc for exc in outcome.values() if exc is not None)
    return verified


async def accept(delivery: Delivery) -> list[str]:
    """Run checks 5-7 on a parsed delivery and write the token; the connection ids written.

    :raises Rejected: the first failed check (nothing written).
    """
    targets = route(delivery, await asyncio.to_thread(store.list_connections))
    verified = await _verified(delivery, targets)
    written = []
    for conn in verified:
        try:
            await asyncio.to_thread(
                store.write_token,
                conn.conn_id,
                delivery.access_token,
                user_id=delivery.user_id,
                issued_at=delivery.issued_at,
                expires_at=delivery.expires_at,
                source="notifier",
                expected_fingerprint=conn.fingerprint,
            )
        except store.StaleToken as exc:
            raise Rejected(409, str(exc)) from None
        except store.NotWritable as exc:
            raise Rejected(409, str(exc)) from None
        written.append(conn.conn_id)
    log.info(
        "Upstox notifier: new access token for user %s written to %s (issued %d)",
        delivery.user_id,
        ", ".join(written),
        delivery.issued_at,
    )
    return written
