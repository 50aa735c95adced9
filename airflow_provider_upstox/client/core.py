"""The request core shared by the sync and async clients: builds requests, reads answers. No I/O.

Each REST read is described once, as a :class:`Call` (method, path, query, how to check ``data``).
:func:`build_request` turns it into an ``httpx.Request``; :func:`parse_response` turns the
``httpx.Response`` into the ``data`` member of Upstox's envelope or one of the typed errors of
:mod:`airflow_provider_upstox.exceptions`; :func:`translate_transport_error` is the single place
where httpx exceptions become provider exceptions. The sync and async clients only send.

Secrets: the token goes only into the ``Authorization`` header. Error texts carry the request
*path* (never the query string) and are scrubbed of the token in case Upstox ever echoes it.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx

from airflow_provider_upstox import __version__
from airflow_provider_upstox.client.config import UpstoxClientConfig
from airflow_provider_upstox.exceptions import (
    INVALID_TOKEN_CODE,
    TOKEN_EXPIRY_HINT,
    UpstoxAPIError,
    UpstoxAuthenticationError,
    UpstoxMalformedResponseError,
    UpstoxRateLimitError,
    UpstoxServerError,
    UpstoxTransportError,
    redact_url,
)
from airflow_provider_upstox.models.updates import normalize_update_types

log = logging.getLogger(__name__)

T = TypeVar("T")

AUTHORIZE_PATH = "/v2/feed/portfolio-stream-feed/authorize"
PROFILE_PATH = "/v2/user/profile"
ORDER_BOOK_PATH = "/v2/order/retrieve-all"
ORDER_DETAILS_PATH = "/v2/order/details"
ORDER_HISTORY_PATH = "/v2/order/history"
TRADES_PATH = "/v2/order/trades/get-trades-for-day"
ORDER_TRADES_PATH = "/v2/order/trades"
POSITIONS_PATH = "/v2/portfolio/short-term-positions"
HOLDINGS_PATH = "/v2/portfolio/long-term-holdings"
GTT_ORDERS_PATH = "/v3/order/gtt"

#: Upstox error codes with a fixed meaning (``docs/PROTOCOL.md`` §3).
RATE_LIMIT_CODE = "UDAPI10005"

USER_AGENT = f"airflow-provider-upstox/{__version__}"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One REST read: what to send and how to check the ``data`` of a successful answer.

    :param path: request path, also the ``path`` carried by errors.
    :param params: query parameters (never secret: the token travels in a header).
    :param parse: checks and converts the envelope's ``data``; raises
        :class:`UpstoxMalformedResponseError` when it is not the documented shape.
    """

    path: str
    parse: Callable[[Any, str], T]
    params: Mapping[str, str] = field(default_factory=dict)
    method: str = "GET"


def build_request(config: UpstoxClientConfig, call: Call[Any]) -> httpx.Request:
    """The ``httpx.Request`` for *call*, with Bearer token and ``Accept: application/json``."""
    return httpx.Request(
        call.method,
        config.base_url + call.path,
        params=dict(call.params) or None,
        headers={
            "Authorization": f"Bearer {config.access_token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        },
        # The timeout travels with the request: clients with different timeouts share one pool.
        # No bound on the wait for a free pooled connection: the shared pool is a queue (a
        # thousand streams reconnecting wait their turn); connect, read and write stay bounded.
        extensions={"timeout": httpx.Timeout(config.timeout, pool=None).as_dict()},
    )


def parse_response(response: httpx.Response, call: Call[T], token: str = "") -> T:
    """Check *response* and return ``call.parse`` of its ``data``.

    :param token: the access token, scrubbed from any text copied into an error.
    :raises UpstoxAuthenticationError: 401/403 or code ``UDAPI100050``.
    :raises UpstoxRateLimitError: 429 or code ``UDAPI10005`` (``retry_after`` from the header).
    :raises UpstoxServerError: 5xx.
    :raises UpstoxMalformedResponseError: a 2xx answer that is not the documented envelope.
    :raises UpstoxAPIError: any other error status.
    """
    path = call.path
    status = response.status_code
    body = _json_or_none(response.content)
    if status >= 400 or (isinstance(body, dict) and body.get("status") == "error"):
        raise _error_for(response, body, path, token)
    if body is _NOT_JSON:
        raise UpstoxMalformedResponseError(
            "Upstox answered with a body that is not JSON", status_code=status, path=path
        )
    if not isinstance(body, dict) or body.get("status") != "success":
        shown = body.get("status") if isinstance(body, dict) else type(body).__name__
        raise UpstoxMalformedResponseError(
            f"Upstox answered without status 'success' (got {_scrub(repr(shown), token)})",
            status_code=status,
            path=path,
        )
    if "data" not in body:
        raise UpstoxMalformedResponseError(
            "Upstox answer has no 'data' member", status_code=status, path=path
        )
    return call.parse(body["data"], path)


def translate_transport_error(exc: httpx.HTTPError, path: str) -> UpstoxTransportError:
    """The provider exception for an httpx failure without an HTTP answer (the ONE translation point).

    The httpx exception stays available as ``__cause__`` (set by ``raise ... from``), which is what
    :func:`~airflow_provider_upstox.client.retry.is_retryable` inspects: never the message text.
    """
    if isinstance(exc, httpx.TimeoutException):
        what = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "waiting for the answer",
            httpx.WriteTimeout: "sending the request",
            httpx.PoolTimeout: "waiting for a free connection",
        }.get(type(exc), "the request")
        return UpstoxTransportError(f"Upstox request to {path} timed out while {what}", path=path)
    detail = redact_url(str(exc)) or type(exc).__name__
    return UpstoxTransportError(f"Upstox request to {path} failed: {detail}", path=path)


def _json_or_none(content: bytes) -> Any:
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError:
        return _NOT_JSON


class _NotJson:
    def __repr__(self) -> str:
        return "<not JSON>"


_NOT_JSON: Any = _NotJson()


def _first_error(body: Any) -> tuple[str | None, str | None]:
    """Upstox error code and message of the first entry of ``errors`` (snake_case read first)."""
    if not isinstance(body, dict):
        return None, None
    errors = body.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, None
    first = errors[0]
    code = first.get("error_code") or first.get("errorCode")
    message = first.get("message")
    return (str(code) if code else None), (str(message) if message else None)


def _error_for(response: httpx.Response, body: Any, path: str, token: str) -> UpstoxAPIError:
    status = response.status_code
    code, upstox_message = _first_error(body)
    if upstox_message:
        upstox_message = _scrub(upstox_message, token)
    details: dict[str, Any] = {
        "status_code": status,
        "error_code": code,
        "upstox_message": upstox_message,
        "path": path,
    }
    if status in (401, 403) or code == INVALID_TOKEN_CODE:
        return UpstoxAuthenticationError(
            f"Upstox refused the access token: it is invalid or expired. {TOKEN_EXPIRY_HINT}", **details
        )
    if status == 429 or code == RATE_LIMIT_CODE:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return UpstoxRateLimitError(
            "Upstox rate limit reached (50 requests/s, 500/min, 2000/30 min per user)",
            retry_after=retry_after,
            **details,
        )
    if status >= 500:
        return UpstoxServerError(f"Upstox server error {status}", **details)
    if status < 400:
        return UpstoxMalformedResponseError("Upstox answered with status 'error'", **details)
    return UpstoxAPIError(f"Upstox rejected the request with HTTP {status}", **details)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date), ``None`` if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _scrub(text: str, token: str) -> str:
    """*text* without the token (Upstox never echoes it as far as we know; cheap insurance)."""
    if token and len(token) >= 4:
        text = text.replace(token, "***")
    return redact_url(text)


# --- checks of ``data`` per endpoint -------------------------------------------------------------


def _expect_dict(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UpstoxMalformedResponseError(
            f"Upstox 'data' should be an object, got {type(data).__name__}", path=path
        )
    return data


def _expect_list(data: Any, path: str) -> list[dict[str, Any]]:
    """A list of objects. ``null`` counts as empty: Upstox sends it for an empty book."""
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise UpstoxMalformedResponseError(
            f"Upstox 'data' should be a list of objects, got {type(data).__name__}", path=path
        )
    return data


def profile() -> Call[dict[str, Any]]:
    return Call(PROFILE_PATH, _expect_dict)


def order_book() -> Call[list[dict[str, Any]]]:
    return Call(ORDER_BOOK_PATH, _expect_list)


def order_details(order_id: str) -> Call[dict[str, Any]]:
    return Call(ORDER_DETAILS_PATH, _expect_dict, {"order_id": _required("order_id", order_id)})


def order_history(order_id: str) -> Call[list[dict[str, Any]]]:
    return Call(ORDER_HISTORY_PATH, _expect_list, {"order_id": _required("order_id", order_id)})


def trades() -> Call[list[dict[str, Any]]]:
    return Call(TRADES_PATH, _expect_list)


def order_trades(order_id: str) -> Call[list[dict[str, Any]]]:
    """The fills of one order (``docs/PROTOCOL.md`` §8)."""
    return Call(ORDER_TRADES_PATH, _expect_list, {"order_id": _required("order_id", order_id)})


def positions() -> Call[list[dict[str, Any]]]:
    return Call(POSITIONS_PATH, _expect_list)


def holdings() -> Call[list[dict[str, Any]]]:
    return Call(HOLDINGS_PATH, _expect_list)


def gtt_orders(gtt_order_id: str | None = None) -> Call[list[dict[str, Any]]]:
    params = {"gtt_order_id": gtt_order_id} if gtt_order_id else {}
    return Call(GTT_ORDERS_PATH, _expect_list, params)


def authorize(update_types: str | Iterable[str] | None) -> Call[dict[str, Any]]:
    """The authorize call. *update_types* is validated and de-duplicated here, before any request.

    :raises ValueError: an unknown update type (the message names the valid ones).
    """
    types = normalize_update_types(update_types)
    return Call(AUTHORIZE_PATH, _expect_dict, {"update_types": ",".join(types)})


def _required(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value.strip()


def read_authorized_uri(data: dict[str, Any], path: str = AUTHORIZE_PATH) -> str:
    """The raw authorized stream URI of an authorize answer's ``data``, before any check of it.

    ``authorized_redirect_uri`` first; the deprecated ``authorizedRedirectUri`` only when the first
    is absent, with a warning in the log (Upstox announced the camelCase key's removal).

    :raises UpstoxMalformedResponseError: neither key holds a non-empty string.
    """
    uri = data.get("authorized_redirect_uri")
    if uri is None and data.get("authorizedRedirectUri") is not None:
        log.warning(
            "Upstox answered the portfolio stream authorization with the deprecated camelCase key "
            "'authorizedRedirectUri' only; using it. Expect Upstox to remove it."
        )
        uri = data.get("authorizedRedirectUri")
    if uri is None:
        raise UpstoxMalformedResponseError(
            "Upstox authorization answer has no 'authorized_redirect_uri'", status_code=200, path=path
        )
    if not isinstance(uri, str) or not uri.strip():
        raise UpstoxMalformedResponseError(
            f"Upstox 'authorized_redirect_uri' should be a non-empty string, got {type(uri).__name__}",
            status_code=200,
            path=path,
        )
    return uri.strip()


def check_stream_uri(uri: str, path: str = AUTHORIZE_PATH) -> str:
    """*uri* if it is a ``ws://``/``wss://`` URL with a host; the error never shows the URI itself.

    :raises UpstoxMalformedResponseError: another scheme or no host.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("ws", "wss") or not parts.hostname:
        scheme = parts.scheme if parts is not None and parts.scheme else "none"
        scheme = scheme if len(scheme) <= 10 else "other"
        raise UpstoxMalformedResponseError(
            f"Upstox 'authorized_redirect_uri' is not a WebSocket URL (scheme {scheme!r}; "
            "expected ws:// or wss:// with a host)",
            status_code=200,
            path=path,
        )
    return uri


#: Query parameters of an authorized stream URI that are credentials (``docs/PROTOCOL.md`` §1).
_SECRET_PARAMS = frozenset({"code", "requestid", "token", "access_token"})


def stream_uri_secrets(uri: str) -> tuple[str, ...]:
    """Every string to register with a secrets masker for an authorized stream URI.

    The URI itself, plus the values of its credential parameters (``code``, ``requestId``) on their
    own: a log line may show only the request path and query (a WebSocket handshake error does),
    which masking the full URI alone would miss.
    """
    parts: list[str] = [uri]
    try:
        query = urlsplit(uri).query
    except ValueError:
        return tuple(parts)
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name.lower() in _SECRET_PARAMS and len(value) >= 4 and value not in parts:
            parts.append(value)
    return tuple(parts)
