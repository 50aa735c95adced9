"""Token state of each ``upstox`` connection, as the plugin page and its JSON show it.

Valid until: the renewal record's ``expires_at`` when the plugin wrote the token; otherwise (a
pasted token) the next 03:30 India time, when every standard token dies (``docs/PROTOCOL.md`` §6).
The live state comes from one profile read per connection (concurrently, 5 s timeout): ``valid``,
``refused`` (Upstox refuses the token: the first such sighting is recorded as ``refused since``),
``unreachable`` or ``no token``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from airflow_provider_upstox.client.login import IST, aget_profile_with_token, next_daily_expiry
from airflow_provider_upstox.exceptions import UpstoxError, is_token_refusal
from airflow_provider_upstox.hooks.upstox import login_endpoint
from airflow_provider_upstox.plugins import connections as store

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class TokenStatus:
    conn_id: str
    state: str  # valid | refused | unreachable | no token | expired
    user_id: str | None
    expected_user: str | None
    fingerprint: str | None
    valid_until: int | None  # epoch ms
    refused_since: int | None  # epoch ms
    source: str | None  # oauth | notifier | None (pasted)
    can_renew_by_app: bool  # has client_id and client_secret
    read_only_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _probe(conn: store.UpstoxConnection) -> tuple[str, str | None]:
    if not conn.token:
        return "no token", None
    try:
        base_url, _, verify = login_endpoint(conn.conn_id, conn.host, conn.port, conn.extra)
        profile = await aget_profile_with_token(base_url, conn.token, timeout=PROBE_TIMEOUT, verify=verify)
    except UpstoxError as exc:
        return ("refused" if is_token_refusal(exc) else "unreachable"), None
    except ValueError:
        return "unreachable", None
    user = profile.get("user_id") or profile.get("userId")
    return "valid", str(user) if user else None


async def status_of(conn: store.UpstoxConnection, *, probe: bool = True) -> TokenStatus:
    now = int(time.time() * 1000)
    record = conn.record
    state, live_user = await _probe(conn) if probe else ("unknown", None)
    expires = record.get("expires_at") if isinstance(record.get("expires_at"), int) else None
    refused_since = record.get("refused_since") if isinstance(record.get("refused_since"), int) else None
    if state == "refused" and conn.fingerprint:
        if expires is not None and expires <= now:
            refused_since = refused_since or expires
        if refused_since is None and conn.read_only_reason is None:
            refused_since = await asyncio.to_thread(store.record_refusal, conn.conn_id, conn.fingerprint)
        refused_since = refused_since or now
    elif state == "valid":
        refused_since = None
    valid_until = expires if expires is not None else (next_daily_expiry(now) if conn.token else None)
    return TokenStatus(
        conn_id=conn.conn_id,
        state=state,
        user_id=live_user or record.get("user_id") or None,
        expected_user=conn.expected_user or None,
        fingerprint=conn.fingerprint,
        valid_until=valid_until if state != "refused" else None,
        refused_since=refused_since,
        source=record.get("source"),
        can_renew_by_app=bool(conn.client_id and conn.extra.get("client_secret")),
        read_only_reason=conn.read_only_reason,
    )


async def statuses(conns: list[store.UpstoxConnection], *, probe: bool = True) -> list[TokenStatus]:
    return list(await asyncio.gather(*(status_of(c, probe=probe) for c in conns)))


def format_ms(epoch_ms: int | None) -> str:
    if not epoch_ms:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, IST).strftime("%Y-%m-%d %H:%M IST")
