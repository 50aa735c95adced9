"""Errors raised by the Upstox provider.

One root, :class:`UpstoxError`, so callers can catch everything this package raises. Details are
attributes, never parsed back from message text::

    UpstoxError
    ├── UpstoxAPIError                 a REST call answered with an error (status, code, message, path)
    │   ├── UpstoxAuthenticationError  401/403, e.g. UDAPI100050: the token must be regenerated
    │   ├── UpstoxRateLimitError       429 (UDAPI10005), carries ``retry_after`` when known
    │   ├── UpstoxServerError          5xx
    │   └── UpstoxMalformedResponseError  not JSON, ``status`` not success, missing or bad field
    ├── UpstoxTransportError           connect/read timeouts and network failures (no HTTP answer)
    ├── UpstoxStreamError              the portfolio WebSocket failed
    │   ├── UpstoxStreamClosedError    the socket closed (``code``/``reason`` of the close frame)
    │   └── UpstoxStreamProtocolError  the handshake was refused or a frame broke the protocol
    └── InvalidUpdateError             an update cannot be stored (missing key, wrong type, absurd value)

No exception text ever contains the access token or an authorized stream URL: the URL's ``code``
query parameter is a single-use credential. Use :func:`redact_url` before putting a URL anywhere.
"""

from __future__ import annotations

import re
from typing import Any

TOKEN_EXPIRY_HINT = (
    "Upstox access tokens expire at 03:30 India time (Asia/Kolkata) the day after they are issued; "
    "generate a new one and update the password of the Upstox connection."
)

_SECRET_QUERY = re.compile(r"(?i)([?&](?:code|requestId|token|access_token)=)[^&#\s]*")


def redact_url(url: str) -> str:
    """Return *url* with credential-bearing query values (``code``, ``requestId``...) replaced by ``***``."""
    return _SECRET_QUERY.sub(r"\1***", url)


class UpstoxError(Exception):
    """Root of every error raised by this provider."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only details (status, code, retry_after...) live in __dict__; the default
        # exception pickling would call cls(*args) and lose them. Airflow ships exceptions
        # between processes, so keep them.
        return (_restore_error, (type(self), self.args, self.__dict__))


def _restore_error(cls: type[UpstoxError], args: tuple[Any, ...], state: dict[str, Any]) -> UpstoxError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class UpstoxAPIError(UpstoxError):
    """A REST call to Upstox answered with an error.

    :param message: what went wrong, in words a user can act on.
    :param status_code: HTTP status of the response (``None`` if no response).
    :param error_code: Upstox error code such as ``UDAPI100050`` when the body had one.
    :param upstox_message: the message Upstox gave, when the body had one.
    :param path: the request path (never the query string, which may carry credentials).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        upstox_message: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_code = error_code
        self.upstox_message = upstox_message
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        details = []
        if self.status_code is not None:
            details.append(f"HTTP {self.status_code}")
        if self.error_code:
            details.append(f"code {self.error_code}")
        if self.path:
            details.append(f"path {self.path}")
        if self.upstox_message:
            details.append(f"Upstox said: {self.upstox_message!r}")
        base = super().__str__()
        return f"{base} ({', '.join(details)})" if details else base

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({super().__str__()!r}, status_code={self.status_code!r}, "
            f"error_code={self.error_code!r}, path={self.path!r})"
        )


class UpstoxAuthenticationError(UpstoxAPIError):
    """The access token was refused (401/403, ``UDAPI100050``). Never retried: it must be regenerated."""


class UpstoxRateLimitError(UpstoxAPIError):
    """Upstox throttled the request (429, ``UDAPI10005``).

    :param retry_after: seconds from a ``Retry-After`` header, ``None`` when Upstox sent none.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


#: Upstox's error code for an invalid or expired access token (``docs/PROTOCOL.md`` §3).
INVALID_TOKEN_CODE = "UDAPI100050"


def is_token_refusal(exc: BaseException) -> bool:
    """Did Upstox refuse the token itself (401/403 or ``UDAPI100050``), as opposed to anything else?

    The one test the stream and the history backfill use to wait for a new token instead of retrying.
    """
    if isinstance(exc, UpstoxAuthenticationError):
        return True
    if isinstance(exc, UpstoxAPIError):
        return exc.status_code in (401, 403) or exc.error_code == INVALID_TOKEN_CODE
    return False


class UpstoxServerError(UpstoxAPIError):
    """Upstox answered 5xx: retried with backoff, raised when retries run out."""


class UpstoxMalformedResponseError(UpstoxAPIError):
    """The answer was not what the documented API returns (not JSON, no success status, bad field)."""


class UpstoxTransportError(UpstoxError):
    """No HTTP answer: connect or read timeout, refused connection, broken network.

    :param path: the request path (no query string).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class UpstoxStreamError(UpstoxError):
    """The portfolio stream WebSocket failed."""


class UpstoxStreamClosedError(UpstoxStreamError):
    """The stream closed. ``code``/``reason`` are the close frame's, ``None`` for an abrupt drop."""

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(message)


class UpstoxStreamProtocolError(UpstoxStreamError):
    """The handshake was refused (e.g. a used or unknown code) or the peer broke the protocol."""


class InvalidUpdateError(UpstoxError, ValueError):
    """An update cannot be stored.

    :param message: what is wrong, naming the field.
    :param update_type: ``order``, ``position``...
    :param key: the natural key of the update as far as it could be read (``order_id``...).
    """

    def __init__(self, message: str, *, update_type: str | None = None, key: str | None = None) -> None:
        self.update_type = update_type
        self.key = key
        super().__init__(message)

    def __str__(self) -> str:
        where = f"{self.update_type or 'update'} {self.key!r}" if self.key else (self.update_type or "update")
        return f"invalid {where}: {super().__str__()}"
