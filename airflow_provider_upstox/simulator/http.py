"""HTTP answers of the simulator: Upstox-shaped JSON bodies and errors, built as websockets Responses.

``websockets`` serves plain HTTP through ``process_request``: any :class:`Response` returned there
is sent instead of a WebSocket handshake (and the connection then closes). Upstox error bodies carry
snake_case and camelCase keys side by side (``docs/PROTOCOL.md`` §3), so do ours.
"""

from __future__ import annotations

import email.utils
import http
from collections.abc import Iterable
from typing import Any, Final

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

AUTHORIZE_PATH: Final = "/v2/feed/portfolio-stream-feed/authorize"
DIRECT_PATH: Final = "/v2/feed/portfolio-stream-feed"
SOCKET_PATH: Final = "/v2/feed/portfolio-stream-feed/socket"
VALID_UPDATE_TYPES: Final = ("order", "position", "holding", "gtt_order")

INVALID_TOKEN: Final = ("UDAPI100050", "Invalid token used to access API")
TOO_MANY_REQUESTS: Final = ("UDAPI10005", "Too Many Request Sent")
METHOD_NOT_ALLOWED: Final = ("UDAPI10000", "This request is not supported by Upstox API")
# Codes below are not documented for these cases; the simulator's choice (assumption).
FORBIDDEN: Final = ("UDAPI100072", "Access to this resource is forbidden")
SERVER_ERROR: Final = ("UDAPI100500", "Something went wrong, please try again later")
INVALID_UPDATE_TYPES: Final = (
    "UDAPI1120",
    "Invalid update_types; allowed: order, position, holding, gtt_order",
)
ORDER_NOT_FOUND: Final = ("UDAPI100010", "Order not found")
GTT_NOT_FOUND: Final = ("UDAPI1126", "GTT order not found")
MISSING_PARAM: Final = ("UDAPI1026", "Required parameter is missing")
NOT_FOUND: Final = ("UDAPI100060", "Resource not Found")
CODE_REFUSED: Final = ("UDAPI100075", "Invalid or already used authorization code")

_encode = msgspec.json.Encoder().encode


def response(status: int, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    """A complete HTTP/1.1 response that closes the connection (websockets serves one request each)."""
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            *extra,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def json_response(status: int, payload: Any, extra: Iterable[tuple[str, str]] = ()) -> Response:
    return response(status, _encode(payload), "application/json", extra)


def success(data: Any) -> Response:
    return json_response(200, {"status": "success", "data": data})


def error_body(code: str, message: str, property_path: str | None = None) -> dict[str, Any]:
    """An Upstox error body in the shape of ``docs/PROTOCOL.md`` §3."""
    return {
        "status": "error",
        "errors": [
            {
                "errorCode": code,
                "error_code": code,
                "message": message,
                "propertyPath": property_path,
                "property_path": property_path,
                "invalidValue": None,
                "invalid_value": None,
            }
        ],
    }


def error(status: int, code_message: tuple[str, str], extra: Iterable[tuple[str, str]] = ()) -> Response:
    return json_response(status, error_body(*code_message), extra)


def injected_error(status: int, retry_after: float | None) -> Response:
    """The answer of an injected HTTP failure (401/403/429/5xx) with Upstox's body for that status."""
    if status == 401:
        return error(401, INVALID_TOKEN)
    if status == 403:
        return error(403, FORBIDDEN)
    if status == 429:
        extra = [] if retry_after is None else [("Retry-After", _retry_after(retry_after))]
        return error(429, TOO_MANY_REQUESTS, extra)
    return error(status, SERVER_ERROR)


def _retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    value = request.headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def parse_update_types(raw: list[str] | None) -> tuple[str, ...] | None:
    """``update_types`` as Upstox reads it: comma separated, default ``order``; ``None`` if invalid."""
    values = [v.strip() for item in (raw or []) for v in item.split(",") if v.strip()]
    if not values:
        return ("order",)
    if any(v not in VALID_UPDATE_TYPES for v in values):
        return None
    return tuple(t for t in VALID_UPDATE_TYPES if t in values)


def is_websocket_upgrade(request: Request) -> bool:
    upgrade = request.headers.get("Upgrade", "")
    return "websocket" in upgrade.lower()
