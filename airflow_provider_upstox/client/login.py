"""Getting a new access token: the login calls of ``docs/PROTOCOL.md`` §6. No Airflow import.

Three calls, each described once (pure request builders and answer parsers) and sent by
:func:`send` / :func:`asend`, one attempt each: the authorization code is single-use whether the
exchange works or not, and a repeated token request would prompt the user twice, so neither is
retried.

- :func:`authorization_dialog_url`: where to send a browser for the OAuth code flow.
- :func:`code_exchange`: ``POST /v2/login/authorization/token`` (form-encoded) -> :class:`IssuedToken`.
- :func:`token_request`: ``POST /v3/login/auth/token/request/{client_id}`` (JSON) ->
  :class:`TokenRequest`; the token itself arrives later at the app's notifier webhook.

Secrets (the app secret, the code, the new token) travel only in request bodies, never in a URL,
and are kept out of ``repr`` and of every error text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import quote, urlencode

import httpx

from airflow_provider_upstox.client.aio import AsyncUpstoxClient
from airflow_provider_upstox.client.config import UpstoxClientConfig
from airflow_provider_upstox.client.core import USER_AGENT, translate_transport_error
from airflow_provider_upstox.exceptions import UpstoxAPIError, UpstoxMalformedResponseError

DIALOG_PATH: Final = "/v2/login/authorization/dialog"
CODE_EXCHANGE_PATH: Final = "/v2/login/authorization/token"
TOKEN_REQUEST_PATH: Final = "/v3/login/auth/token/request/{client_id}"

#: India Standard Time (no daylight saving): every access token dies at 03:30 of this zone (§6).
IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")
DAILY_EXPIRY: Final = (3, 30)


@dataclass(frozen=True)
class LoginApp:
    """An Upstox app: API key, API secret and the redirect URI registered in the developer console."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str = ""


@dataclass(frozen=True)
class IssuedToken:
    """A new access token and what Upstox said about it. ``repr`` hides the token.

    :param issued_at: epoch milliseconds (``now`` when Upstox did not say).
    :param expires_at: epoch milliseconds (the next 03:30 India time when Upstox did not say).
    """

    access_token: str = field(repr=False)
    user_id: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True)
class TokenRequest:
    """Upstox's answer to a token request: the user has until ``authorization_expiry`` (epoch ms)."""

    authorization_expiry: int
    notifier_url: str | None


def next_daily_expiry(issued_at_ms: int) -> int:
    """Epoch ms of the first 03:30 India time strictly after *issued_at_ms* (§6: whenever it was made)."""
    issued = datetime.fromtimestamp(issued_at_ms / 1000, IST)
    expiry = issued.replace(hour=DAILY_EXPIRY[0], minute=DAILY_EXPIRY[1], second=0, microsecond=0)
    if expiry <= issued:
        expiry += timedelta(days=1)
    return int(expiry.timestamp() * 1000)


def authorization_dialog_url(base_url: str, app: LoginApp, state: str) -> str:
    """The URL of Upstox's login dialog; Upstox redirects to ``app.redirect_uri?code=...&state=...``."""
    if not app.redirect_uri:
        raise ValueError("the Upstox app has no redirect URI: set it in the connection")
    query = urlencode(
        {
            "client_id": app.client_id,
            "redirect_uri": app.redirect_uri,
            "response_type": "code",
            "state": state,
        }
    )
    return f"{base_url.rstrip('/')}{DIALOG_PATH}?{query}"


def code_exchange_request(base_url: str, app: LoginApp, code: str) -> httpx.Request:
    """``POST /v2/login/authorization/token``, form-encoded (§6)."""
    if not code:
        raise ValueError("no authorization code")
    return httpx.Request(
        "POST",
        base_url.rstrip("/") + CODE_EXCHANGE_PATH,
        data={
            "code": code,
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "redirect_uri": app.redirect_uri,
            "grant_type": "authorization_code",
        },
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
    )


def token_request_request(base_url: str, app: LoginApp) -> httpx.Request:
    """``POST /v3/login/auth/token/request/{client_id}`` with the secret in a JSON body (§6)."""
    path = TOKEN_REQUEST_PATH.format(client_id=quote(app.client_id, safe=""))
    return httpx.Request(
        "POST",
        base_url.rstrip("/") + path,
        json={"client_secret": app.client_secret},
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
    )


def parse_code_exchange(response: httpx.Response, now_ms: int | None = None) -> IssuedToken:
    """The token of a code exchange answer (flat, or wrapped in Upstox's ``status``/``data`` envelope)."""
    data = _data(response, CODE_EXCHANGE_PATH, "the authorization code")
    token = data.get("access_token")
    user_id = data.get("user_id") or data.get("userId")
    if not isinstance(token, str) or not token.strip() or not user_id:
        raise UpstoxMalformedResponseError(
            "Upstox code exchange answer has no 'access_token' or 'user_id'",
            status_code=response.status_code,
            path=CODE_EXCHANGE_PATH,
        )
    issued = _epoch_ms(data.get("issued_at")) or (now_ms if now_ms is not None else int(time.time() * 1000))
    expires = _epoch_ms(data.get("expires_at")) or next_daily_expiry(issued)
    return IssuedToken(token.strip(), str(user_id), issued, expires)


def parse_token_request(response: httpx.Response) -> TokenRequest:
    """The ``authorization_expiry`` and ``notifier_url`` of a token request answer."""
    path = TOKEN_REQUEST_PATH
    data = _data(response, path, "the access token request")
    expiry = _epoch_ms(data.get("authorization_expiry"))
    if expiry is None:
        raise UpstoxMalformedResponseError(
            "Upstox token request answer has no 'authorization_expiry'",
            status_code=response.status_code,
            path=path,
        )
    notifier = data.get("notifier_url")
    return TokenRequest(expiry, str(notifier) if notifier else None)


def send(request: httpx.Request, *, timeout: float = 30.0, verify: bool = True) -> httpx.Response:
    """One attempt, sync. Transport failures become :class:`UpstoxTransportError` (path only)."""
    try:
        with httpx.Client(timeout=timeout, verify=verify, follow_redirects=False) as http:
            return http.send(request)
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, request.url.path) from exc


async def asend(request: httpx.Request, *, timeout: float = 30.0, verify: bool = True) -> httpx.Response:
    """One attempt, async."""
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=verify, follow_redirects=False) as http:
            return await http.send(request)
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, request.url.path) from exc


def _data(response: httpx.Response, path: str, what: str) -> dict[str, Any]:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if status >= 400 or (isinstance(body, dict) and body.get("status") == "error"):
        # Upstox's own message is not copied: it might echo the code or the secret back.
        raise UpstoxAPIError(
            f"Upstox refused {what} (check the connection's API key, secret and redirect URI)",
            status_code=status,
            error_code=_first_error_code(body),
            path=path,
        )
    if not isinstance(body, dict):
        raise UpstoxMalformedResponseError(
            "Upstox answered with a body that is not a JSON object", status_code=status, path=path
        )
    inner = body.get("data")
    if body.get("status") == "success" and isinstance(inner, dict):
        return inner
    return body


def _first_error_code(body: Any) -> str | None:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    code = errors[0].get("error_code") or errors[0].get("errorCode")
    return str(code)[:40] if code else None


def _epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds from an int or a digit string (Upstox sends both); ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip()) or None
    return None


async def aget_profile_with_token(
    base_url: str, access_token: str, *, timeout: float = 30.0, verify: bool = True
) -> dict[str, Any]:
    """The profile seen with *access_token*, one attempt: how a delivered token is verified (§6).

    :raises UpstoxAuthenticationError: Upstox refuses the token.
    """
    config = UpstoxClientConfig(
        base_url=base_url, access_token=access_token, timeout=timeout, verify=verify, max_attempts=1
    )
    async with AsyncUpstoxClient(config) as client:
        return await client.get_profile()
