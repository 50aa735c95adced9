"""``UpstoxHook``: maps an Airflow ``upstox`` connection to the Airflow-free REST clients.

The connection (see ``get_provider_info.py`` for the form):

=============  ==============================================================================
password       the Upstox access token (required)
host           base URL, default ``https://api.upstox.com``; a bare host name means ``https://``
extra          ``update_types`` (default all four), ``timeout`` (seconds, default 30),
               ``verify`` (TLS verification, default true); for token renewal (all optional):
               ``client_id`` (API key), ``client_secret`` (API secret, masked by Airflow as its
               name contains ``secret``), ``redirect_uri``, ``user_id`` (the expected account),
               and ``renewal`` (written by the plugin with a new token: issued/expiry time,
               user, fingerprint of the token it describes)
=============  ==============================================================================

The token is registered with Airflow's secrets masker as soon as it is read, once per process and
token value (the masker is process-wide and recompiles one regex of every value ever added, so a
triggerer running a thousand streams must not add the same value again and again). The stream URI
that :meth:`UpstoxHook.authorize_portfolio_stream` hands to its caller is masked too, since the
caller may log it; the trigger never hands it out and keeps it out of every message instead of
masking one new value per connect. Async methods resolve the connection with
``aget_connection()``/``aextra_dejson()`` and mask with ``amask_secret``: the sync counterparts talk
to the task supervisor with a blocking call that raises ``DeadlockImminentError`` inside an event
loop. The resolved connection is cached per hook.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from airflow.sdk import BaseHook
from tenacity.wait import wait_base

from airflow_provider_upstox.client import AsyncUpstoxClient, UpstoxClient, UpstoxClientConfig, login
from airflow_provider_upstox.client.config import DEFAULT_BASE_URL
from airflow_provider_upstox.client.core import stream_uri_secrets
from airflow_provider_upstox.client.login import IssuedToken, LoginApp, TokenRequest
from airflow_provider_upstox.exceptions import (
    UpstoxError,
    UpstoxMalformedResponseError,
)
from airflow_provider_upstox.exceptions import is_token_refusal as is_token_refusal  # re-exported
from airflow_provider_upstox.models.updates import GTT_ORDER, HOLDING, ORDER, POSITION, normalize_update_types

try:  # task-sdk >= 1.3.2: masking that cannot deadlock inside an event loop
    from airflow.sdk.log import amask_secret, mask_secret
except ImportError:  # pragma: no cover - older task-sdk
    from airflow.sdk.log import mask_secret

    async def amask_secret(secret: Any, name: str | None = None) -> None:  # type: ignore[misc]
        await asyncio.to_thread(mask_secret, secret, name)


log = logging.getLogger(__name__)


async def _aget_connection_and_extra(hook: BaseHook, conn_id: str) -> tuple[Any, dict[str, Any]]:
    """The connection and its extra without blocking the loop (the common.compat recipe, inlined).

    Airflow 3.3.2+: ``aget_connection()`` and ``aextra_dejson()``, both masking asynchronously.
    Older: the sync calls in a worker thread, where blocking on the supervisor is safe.
    """
    try:
        from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
    except ImportError:  # pragma: no cover - common.compat older than the helpers
        from airflow.sdk import Connection

        if hasattr(Connection, "aextra_dejson"):
            conn = await hook.aget_connection(conn_id)
            return conn, await conn.aextra_dejson()
        conn = await asyncio.to_thread(hook.get_connection, conn_id)
        return conn, await asyncio.to_thread(lambda: conn.extra_dejson)
    conn = await get_async_connection(conn_id, hook)
    return conn, await get_async_extra_dejson(conn)


@dataclass(frozen=True)
class UpstoxConnectionSettings:
    """What an ``upstox`` connection says, validated. ``repr`` hides the token (it is in ``config``)."""

    config: UpstoxClientConfig
    update_types: tuple[str, ...]


def settings_from_connection(
    *,
    conn_id: str,
    password: str | None,
    host: str | None,
    port: int | None,
    extra: dict[str, Any],
) -> UpstoxConnectionSettings:
    """Validate the fields of an ``upstox`` connection. Pure: no Airflow call, no masking.

    :raises ValueError: no token, or an extra with a wrong value (the message names the field).
    """
    token = (password or "").strip()
    if not token:
        raise ValueError(
            f"Upstox connection {conn_id!r} has no access token: put it in the connection's password"
        )
    base_url = _base_url(host, port)
    timeout = _float_extra(extra, "timeout", 30.0, conn_id)
    verify = _bool_extra(extra, "verify", True, conn_id)
    try:
        update_types = normalize_update_types(extra.get("update_types") or None)
    except ValueError as exc:
        raise ValueError(f"Upstox connection {conn_id!r}, extra 'update_types': {exc}") from None
    try:
        config = UpstoxClientConfig(base_url=base_url, access_token=token, timeout=timeout, verify=verify)
    except ValueError as exc:
        raise ValueError(f"Upstox connection {conn_id!r}: {exc}") from None
    return UpstoxConnectionSettings(config=config, update_types=update_types)


def _base_url(host: str | None, port: int | None) -> str:
    host = (host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        host = f"https://{host}"
    if port and host.count(":") == 1:  # scheme separator only: no port in the host field yet
        host = f"{host.rstrip('/')}:{port}"
    return host


def _float_extra(extra: dict[str, Any], name: str, default: float, conn_id: str) -> float:
    value = extra.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise ValueError(
            f"Upstox connection {conn_id!r}, extra {name!r} must be a positive number of seconds"
        )
    return number


def _bool_extra(extra: dict[str, Any], name: str, default: bool, conn_id: str) -> bool:
    value = extra.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"Upstox connection {conn_id!r}, extra {name!r} must be true or false")


def _parse_extra(extra: str | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(extra, dict):
        return extra
    return json.loads(extra) if extra else {}


_Rows = TypeVar("_Rows", covariant=True)


class SnapshotSource(Protocol[_Rows]):
    """The REST reads of a snapshot: :class:`UpstoxClient` (rows), :class:`AsyncUpstoxClient`
    (awaitables of rows) and :class:`UpstoxHook` all have them."""

    def get_order_book(self) -> _Rows: ...
    def get_positions(self) -> _Rows: ...
    def get_holdings(self) -> _Rows: ...
    def get_gtt_orders(self) -> _Rows: ...


def snapshot_reader(source: SnapshotSource[_Rows], update_type: str) -> Callable[[], _Rows]:
    """The REST read that returns every current object of *update_type* (docs/PROTOCOL.md §4).

    The one map from update type to snapshot read, for the stream's snapshot on connect (async
    client) and for reconciliation (hook). ``snapshot_reader(client, "order")()`` reads the order book.

    :raises ValueError: an update type without a snapshot read.
    """
    readers: dict[str, Callable[[], _Rows]] = {
        ORDER: source.get_order_book,
        POSITION: source.get_positions,
        HOLDING: source.get_holdings,
        GTT_ORDER: source.get_gtt_orders,
    }
    try:
        return readers[update_type]
    except KeyError:
        raise ValueError(
            f"no snapshot read for update type {update_type!r}; valid: {', '.join(readers)}"
        ) from None


class UpstoxHook(BaseHook):  # type: ignore[misc]  # airflow is not type-checked here
    """Access to the Upstox REST API and the portfolio stream authorization through a connection.

    :param upstox_conn_id: id of an ``upstox`` connection.
    :param retry_wait: tenacity wait strategy for retries (tests pass ``tenacity.wait_none()``).
    :param client_options: other :class:`UpstoxClientConfig` fields, e.g. ``max_attempts``.
    """

    conn_name_attr = "upstox_conn_id"
    default_conn_name = "upstox_default"
    conn_type = "upstox"
    hook_name = "Upstox"

    def __init__(
        self,
        upstox_conn_id: str = default_conn_name,
        *,
        retry_wait: wait_base | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__()
        self.upstox_conn_id = upstox_conn_id
        self._retry_wait = retry_wait
        self._client_options = client_options
        self._settings: UpstoxConnectionSettings | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(upstox_conn_id={self.upstox_conn_id!r})"

    # --- connection ------------------------------------------------------------------------------

    def _make_settings(
        self, password: str | None, host: str | None, port: int | None, extra: Any
    ) -> UpstoxConnectionSettings:
        settings = settings_from_connection(
            conn_id=self.upstox_conn_id, password=password, host=host, port=port, extra=_parse_extra(extra)
        )
        if self._client_options:
            settings = UpstoxConnectionSettings(
                config=settings.config.replace(**self._client_options), update_types=settings.update_types
            )
        return settings

    def get_settings(self) -> UpstoxConnectionSettings:
        """The validated connection (cached), the token registered with the secrets masker."""
        if self._settings is None:
            conn = self.get_connection(self.upstox_conn_id)
            if conn.password:
                _mask_token_once(conn.password)
            self._settings = self._make_settings(conn.password, conn.host, conn.port, conn.extra_dejson)
            log.debug("Upstox connection %r resolved: %r", self.upstox_conn_id, self._settings)
        return self._settings

    async def aget_settings(self) -> UpstoxConnectionSettings:
        """Async :meth:`get_settings`: never blocks the event loop, never uses the sync masker."""
        if self._settings is None:
            conn, extra = await _aget_connection_and_extra(self, self.upstox_conn_id)
            if conn.password:
                await _amask_token_once(conn.password)
            self._settings = self._make_settings(conn.password, conn.host, conn.port, extra)
            log.debug("Upstox connection %r resolved: %r", self.upstox_conn_id, self._settings)
        return self._settings

    def get_conn(self) -> UpstoxClient:
        """A new sync client for this connection; close it (use ``with``)."""
        return UpstoxClient(
            self.get_settings().config, on_secret=_mask_stream_uri, retry_wait=self._retry_wait
        )

    async def aget_client(self) -> AsyncUpstoxClient:
        """A new async client for this connection; close it (``async with``)."""
        settings = await self.aget_settings()
        return AsyncUpstoxClient(settings.config, on_secret=_amask_stream_uri, retry_wait=self._retry_wait)

    # --- portfolio stream ------------------------------------------------------------------------

    def authorize_portfolio_stream(self, update_types: str | Iterable[str] | None = None) -> str:
        """The single-use stream URL (a secret: never log it). ``None``: the connection's update types.

        :raises ValueError: an unknown update type (before any request).
        """
        if update_types is not None:
            normalize_update_types(update_types)
        with self.get_conn() as client:
            return client.authorize_portfolio_stream(update_types or self.get_settings().update_types)

    async def aauthorize_portfolio_stream(self, update_types: str | Iterable[str] | None = None) -> str:
        """Async :meth:`authorize_portfolio_stream`."""
        if update_types is not None:
            normalize_update_types(update_types)
        settings = await self.aget_settings()
        async with await self.aget_client() as client:
            return await client.authorize_portfolio_stream(update_types or settings.update_types)

    # --- REST reads ------------------------------------------------------------------------------

    def get_profile(self) -> dict[str, Any]:
        with self.get_conn() as client:
            return client.get_profile()

    async def aget_profile(self) -> dict[str, Any]:
        async with await self.aget_client() as client:
            return await client.get_profile()

    def get_account_id(self) -> str:
        """The Upstox ``user_id`` of the token's owner (the ``account`` of stored updates)."""
        return _user_id(self.get_profile())

    async def aget_account_id(self) -> str:
        return _user_id(await self.aget_profile())

    def get_order_book(self) -> list[dict[str, Any]]:
        with self.get_conn() as client:
            return client.get_order_book()

    async def aget_order_book(self) -> list[dict[str, Any]]:
        async with await self.aget_client() as client:
            return await client.get_order_book()

    def get_order_details(self, order_id: str) -> dict[str, Any]:
        with self.get_conn() as client:
            return client.get_order_details(order_id)

    async def aget_order_details(self, order_id: str) -> dict[str, Any]:
        async with await self.aget_client() as client:
            return await client.get_order_details(order_id)

    def get_order_history(self, order_id: str) -> list[dict[str, Any]]:
        with self.get_conn() as client:
            return client.get_order_history(order_id)

    async def aget_order_history(self, order_id: str) -> list[dict[str, Any]]:
        async with await self.aget_client() as client:
            return await client.get_order_history(order_id)

    def get_trades(self) -> list[dict[str, Any]]:
        with self.get_conn() as client:
            return client.get_trades()

    async def aget_trades(self) -> list[dict[str, Any]]:
        async with await self.aget_client() as client:
            return await client.get_trades()

    def get_positions(self) -> list[dict[str, Any]]:
        with self.get_conn() as client:
            return client.get_positions()

    async def aget_positions(self) -> list[dict[str, Any]]:
        async with await self.aget_client() as client:
            return await client.get_positions()

    def get_holdings(self) -> list[dict[str, Any]]:
        with self.get_conn() as client:
            return client.get_holdings()

    async def aget_holdings(self) -> list[dict[str, Any]]:
        async with await self.aget_client() as client:
            return await client.get_holdings()

    def get_gtt_orders(self, gtt_order_id: str | None = None) -> list[dict[str, Any]]:
        with self.get_conn() as client:
            return client.get_gtt_orders(gtt_order_id)

    async def aget_gtt_orders(self, gtt_order_id: str | None = None) -> list[dict[str, Any]]:
        async with await self.aget_client() as client:
            return await client.get_gtt_orders(gtt_order_id)

    def get_snapshot(self, update_type: str) -> list[dict[str, Any]]:
        """Every current object of *update_type* from its REST read (see :func:`snapshot_reader`)."""
        return snapshot_reader(self, update_type)()

    # --- token renewal (issue 16): the app's login calls and what a waiting stream needs ---------

    def get_login_app(self) -> LoginApp:
        """The connection's Upstox app (API key, secret, redirect URI), the secret masked in logs.

        :raises ValueError: the connection has no ``client_id`` or ``client_secret``.
        """
        conn = self.get_connection(self.upstox_conn_id)
        app = login_app_from_extra(self.upstox_conn_id, conn.extra_dejson)
        mask_secret(app.client_secret)
        return app

    def _login_endpoint(self) -> tuple[str, float, bool]:
        conn = self.get_connection(self.upstox_conn_id)
        return login_endpoint(self.upstox_conn_id, conn.host, conn.port, conn.extra_dejson)

    def request_access_token(self) -> TokenRequest:
        """Ask Upstox to prompt the account owner (app, WhatsApp) for a new token (docs/PROTOCOL.md §6).

        The token itself is POSTed by Upstox to the app's notifier webhook (this provider's plugin),
        which writes it into the connection. One attempt: a retry would prompt the user twice.

        :raises ValueError: the connection has no app credentials.
        :raises UpstoxAPIError: Upstox refused the request (wrong key or secret, app not allowed).
        """
        app = self.get_login_app()
        base_url, timeout, verify = self._login_endpoint()
        answer = login.send(login.token_request_request(base_url, app), timeout=timeout, verify=verify)
        request = login.parse_token_request(answer)
        log.info(
            "Requested a new Upstox access token for connection %r; approval possible until %s",
            self.upstox_conn_id,
            _format_ms(request.authorization_expiry),
        )
        return request

    def exchange_code(self, code: str) -> IssuedToken:
        """Trade a single-use OAuth ``code`` for a new token (``POST /v2/login/authorization/token``)."""
        app = self.get_login_app()
        base_url, timeout, verify = self._login_endpoint()
        answer = login.send(login.code_exchange_request(base_url, app, code), timeout=timeout, verify=verify)
        issued = login.parse_code_exchange(answer)
        mask_secret(issued.access_token)
        return issued

    def get_profile_with_token(self, access_token: str) -> dict[str, Any]:
        """The profile as seen with *access_token* (not the connection's): verifies a delivered token.

        :raises UpstoxAuthenticationError: Upstox refuses that token.
        """
        base_url, timeout, verify = self._login_endpoint()
        config = UpstoxClientConfig(
            base_url=base_url, access_token=access_token, timeout=timeout, verify=verify, max_attempts=1
        )
        with UpstoxClient(config, retry_wait=self._retry_wait) as client:
            return client.get_profile()

    async def atoken_fingerprint(self) -> str | None:
        """Fingerprint of the connection's token as stored now (fresh read, never the cached settings).

        Cheap enough for a waiting stream to call every few seconds: one connection lookup, one hash.
        ``None`` when the connection holds no token. The token itself never leaves this method.
        """
        conn, _ = await _aget_connection_and_extra(self, self.upstox_conn_id)
        return token_fingerprint(conn.password)

    def token_fingerprint(self) -> str | None:
        """Sync :meth:`atoken_fingerprint`."""
        return token_fingerprint(self.get_connection(self.upstox_conn_id).password)

    async def arenewal_state(self) -> tuple[str | None, dict[str, Any]]:
        """``(fingerprint, renewal record)`` of the connection now (fresh read); the record is ``{}``
        unless it describes the current token (see ``plugins/connections.py``)."""
        conn, extra = await _aget_connection_and_extra(self, self.upstox_conn_id)
        fingerprint = token_fingerprint(conn.password)
        record = extra.get(RENEWAL_EXTRA_KEY)
        if isinstance(record, dict) and fingerprint and record.get("fingerprint") == fingerprint:
            return fingerprint, record
        return fingerprint, {}

    def forget_settings(self) -> None:
        """Drop the cached connection, so the next call reads the (possibly renewed) token again."""
        self._settings = None

    # --- UI ----------------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: read the profile. ``(True, "Connected as <user_id>")`` or why not.

        Uses a single attempt: a user waiting on the button wants the first answer, not a backoff.
        """
        try:
            settings = self.get_settings()
            config = settings.config.replace(max_attempts=1)
            with UpstoxClient(config, on_secret=_mask_stream_uri, retry_wait=self._retry_wait) as client:
                user_id = _user_id(client.get_profile())
        except (UpstoxError, ValueError) as exc:
            return False, str(exc)
        return True, f"Connected as {user_id}"


#: SHA-256 digests of the tokens this process has registered with the masker (not the tokens).
_masked_tokens: set[bytes] = set()


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _mask_token_once(token: str) -> None:
    """Register *token* with the masker unless this process already did (see the module docstring)."""
    digest = _token_digest(token)
    if digest not in _masked_tokens:
        mask_secret(token)
        _masked_tokens.add(digest)
        _drop_superseded_mask_regexes()


async def _amask_token_once(token: str) -> None:
    digest = _token_digest(token)
    if digest not in _masked_tokens:
        await amask_secret(token)
        _masked_tokens.add(digest)
        _drop_superseded_mask_regexes()


def _drop_superseded_mask_regexes() -> None:
    """Empty Python's regex cache after a new token reached Airflow's secrets masker.

    The masker compiles one regex of every value it holds with ``re.compile``, which keeps each
    compiled pattern in ``re``'s module cache (up to 512 of them). With a new token per account,
    that cache ends up holding every superseded version of the masker's regex: memory quadratic in
    the number of accounts (measured: 380 KiB per ~270-character token at 300 tokens, 22 KiB
    after a purge; ``bench/stream_fleet.py``). The masker keeps its current regex itself, so
    nothing of it is lost; other cached patterns are recompiled on their next use, once.
    Called once per new token and process (Airflow's own lookup has masked it by then), never
    per connect.
    """
    re.purge()


def _mask_stream_uri(uri: str) -> None:
    """Register an authorized stream URI, and its ``code``/``requestId`` alone, with the masker."""
    for secret in stream_uri_secrets(uri):
        mask_secret(secret)


async def _amask_stream_uri(uri: str) -> None:
    for secret in stream_uri_secrets(uri):
        await amask_secret(secret)


def _user_id(profile: dict[str, Any]) -> str:
    user_id = profile.get("user_id") or profile.get("userId")
    if not user_id:
        raise UpstoxMalformedResponseError("Upstox profile has no 'user_id'", path="/v2/user/profile")
    return str(user_id)


# --- token renewal helpers (issue 16) -------------------------------------------------------------

#: Extra key of the renewal record the plugin writes with a new token (issued/expiry time, user,
#: fingerprint). A nested object, so that no key name trips Airflow's sensitive-field masking.
RENEWAL_EXTRA_KEY = "renewal"


def token_fingerprint(token: str | None) -> str | None:
    """A short SHA-256 fingerprint of *token*: tells tokens apart, reveals nothing usable."""
    token = (token or "").strip()
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def login_app_from_extra(conn_id: str, extra: dict[str, Any]) -> LoginApp:
    """The app of an ``upstox`` connection's extra. Pure.

    :raises ValueError: ``client_id`` or ``client_secret`` missing (the message names the field).
    """
    client_id = str(extra.get("client_id") or "").strip()
    secret = str(extra.get("client_secret") or "").strip()
    missing = [name for name, value in (("client_id", client_id), ("client_secret", secret)) if not value]
    if missing:
        raise ValueError(
            f"Upstox connection {conn_id!r} cannot renew its token: extra {' and '.join(missing)} "
            "missing (the API key and secret of your Upstox app)"
        )
    return LoginApp(client_id, secret, str(extra.get("redirect_uri") or "").strip())


def login_endpoint(
    conn_id: str, host: str | None, port: int | None, extra: dict[str, Any]
) -> tuple[str, float, bool]:
    """``(base_url, timeout, verify)`` of a connection, valid with or without a token."""
    return (
        _base_url(host, port),
        _float_extra(extra, "timeout", 30.0, conn_id),
        _bool_extra(extra, "verify", True, conn_id),
    )


def _format_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, login.IST).strftime("%Y-%m-%d %H:%M:%S IST")
