"""The plugin's secrets: the notifier webhook's path key and signed OAuth ``state`` values.

Both derive from one plugin key, HMAC-SHA256 of the label ``airflow-provider-upstox token plugin``
under ``[upstox] plugin_secret`` if set, else Airflow's own ``[api] secret_key`` (which every API
server of a deployment already shares, or their sessions would not work). So every API server
worker agrees on them without storing anything, and rotating the secret rotates both (the notifier
URL in the Upstox developer console must then be updated: the page shows it).

- Notifier key: 32 URL-safe characters (192 bits) in the webhook path, compared in constant time.
- OAuth state: ``<conn_id>.<user>.<issued ms>.<nonce>.<mac>`` (fields base64url), valid for
  :data:`STATE_TTL` seconds, bound to the connection and the Airflow user by the MAC. Single use is
  enforced in the DB (``connections.spend_oauth_state``): a state at or before the last spent one
  of that connection is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

STATE_TTL: Final = 600.0
_LABEL: Final = b"airflow-provider-upstox token plugin"


def plugin_key() -> bytes:
    from airflow.configuration import conf

    secret = conf.get("upstox", "plugin_secret", fallback="") or conf.get("api", "secret_key", fallback="")
    if not secret:
        raise RuntimeError("set [api] secret_key (or [upstox] plugin_secret) to use the Upstox token plugin")
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def notifier_key(key: bytes | None = None) -> str:
    """The path key of the notifier webhook URL."""
    mac = hmac.new(key or plugin_key(), b"notifier", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode()[:32]


def notifier_key_matches(candidate: str, key: bytes | None = None) -> bool:
    return hmac.compare_digest(candidate.encode(), notifier_key(key).encode())


@dataclass(frozen=True)
class OAuthState:
    conn_id: str
    user: str
    issued_at: int  # epoch ms


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, b"state|" + body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_state(conn_id: str, user: str, *, key: bytes | None = None, now: float | None = None) -> str:
    """A fresh state for *user* logging *conn_id* in."""
    issued = int((time.time() if now is None else now) * 1000)
    body = ".".join((_b64(conn_id), _b64(user), str(issued), secrets.token_urlsafe(12)))
    return f"{body}.{_mac(key or plugin_key(), body)}"


def read_state(state: str, *, key: bytes | None = None, now: float | None = None) -> OAuthState:
    """The checked content of *state*.

    :raises ValueError: forged, malformed or expired (the message says which, never the state).
    """
    body, _, mac = state.rpartition(".")
    parts = body.split(".")
    if len(parts) != 4 or len(state) > 2048:
        raise ValueError("malformed login state")
    if not hmac.compare_digest(mac.encode(), _mac(key or plugin_key(), body).encode()):
        raise ValueError("login state with a wrong signature")
    try:
        conn_id, user, issued = _unb64(parts[0]), _unb64(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError("malformed login state") from None
    age = (time.time() if now is None else now) - issued / 1000
    if age > STATE_TTL or age < -60:
        raise ValueError("login state expired: start the login again")
    return OAuthState(conn_id, user, issued)
