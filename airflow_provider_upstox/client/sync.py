"""Synchronous Upstox REST client: the request core plus ``httpx.Client`` sending."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx
import tenacity
from tenacity.wait import wait_base

from airflow_provider_upstox.client import core
from airflow_provider_upstox.client.config import UpstoxClientConfig
from airflow_provider_upstox.client.retry import retry_options

log = logging.getLogger(__name__)

T = TypeVar("T")

_ssl_contexts: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}
_ssl_lock = threading.Lock()


def ssl_key(verify: bool) -> tuple[bool, str | None, str | None]:
    """What a TLS context for *verify* depends on (also the key of the shared async pools)."""
    # httpx honours SSL_CERT_FILE / SSL_CERT_DIR when it builds a context: so does the cache key.
    return bool(verify), os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")


def cached_ssl_context(verify: bool) -> ssl.SSLContext | None:
    """The shared context for *verify* if it was already built (never blocks)."""
    return _ssl_contexts.get(ssl_key(verify))


def shared_ssl_context(verify: bool) -> ssl.SSLContext:
    """One TLS context per ``verify`` setting, shared by every client of the process.

    Building a verifying context loads the whole CA bundle (~0.1 s of CPU): paid once per process
    instead of once per client, which matters in a triggerer whose event loop must never block. A
    configured ``SSLContext`` is safe to share between clients and threads. The first call may block;
    async code warms it up off the loop with :func:`~airflow_provider_upstox.client.aio.ashared_ssl_context`.
    """
    key = ssl_key(verify)
    context = _ssl_contexts.get(key)
    if context is None:
        with _ssl_lock:
            context = _ssl_contexts.get(key)
            if context is None:
                context = httpx.create_ssl_context(verify=bool(verify))
                _ssl_contexts[key] = context
    return context


class UpstoxClient:
    """Blocking client for the Upstox REST reads and the portfolio stream authorization.

    Use as a context manager (or call :meth:`close`) to release the connection pool.

    :param config: where and how to connect; see :class:`UpstoxClientConfig`.
    :param on_secret: called with every authorized stream URI as soon as it is read, before it is
        checked or returned (the Airflow hook passes the secrets masker's ``mask_secret``).
    :param retry_wait: tenacity wait strategy replacing the default jittered backoff (tests pass
        ``tenacity.wait_none()``). A 429's ``Retry-After`` still applies on top of it.
    :param transport: an httpx transport, only for faults no real server can produce.
    """

    def __init__(
        self,
        config: UpstoxClientConfig,
        *,
        on_secret: Callable[[str], None] | None = None,
        retry_wait: wait_base | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self._on_secret = on_secret
        self._retry_wait = retry_wait
        self._http = httpx.Client(
            timeout=config.timeout,
            verify=shared_ssl_context(config.verify),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def __enter__(self) -> UpstoxClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: core.Call[T]) -> T:
        """One attempt: the only place this client touches the network."""
        request = core.build_request(self.config, call)
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise core.translate_transport_error(exc, call.path) from exc
        log.debug("%s %s -> HTTP %s", call.method, call.path, response.status_code)
        return core.parse_response(response, call, self.config.access_token)

    def _call(self, call: core.Call[T]) -> T:
        for attempt in tenacity.Retrying(**retry_options(self.config, self._retry_wait)):
            with attempt:
                return self._send(call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def authorize_portfolio_stream(self, update_types: str | Iterable[str] | None = None) -> str:
        """Authorize the Portfolio Stream Feed; return the single-use ``ws``/``wss`` URL (a secret).

        :param update_types: ``order``, ``position``, ``holding``, ``gtt_order`` (string with commas
            or iterable); ``None`` means all four. Validated before any request.
        :raises ValueError: an unknown update type.
        :raises UpstoxMalformedResponseError: no URI in the answer, or not a WebSocket URL.
        """
        call = core.authorize(update_types)
        uri = core.read_authorized_uri(self._call(call))
        if self._on_secret is not None:
            self._on_secret(uri)
        core.check_stream_uri(uri)
        log.info("Authorized the Upstox portfolio stream for %s", call.params["update_types"])
        return uri

    def get_profile(self) -> dict[str, Any]:
        return self._call(core.profile())

    def get_order_book(self) -> list[dict[str, Any]]:
        return self._call(core.order_book())

    def get_order_details(self, order_id: str) -> dict[str, Any]:
        return self._call(core.order_details(order_id))

    def get_order_history(self, order_id: str) -> list[dict[str, Any]]:
        return self._call(core.order_history(order_id))

    def get_trades(self) -> list[dict[str, Any]]:
        return self._call(core.trades())

    def get_order_trades(self, order_id: str) -> list[dict[str, Any]]:
        return self._call(core.order_trades(order_id))

    def get_positions(self) -> list[dict[str, Any]]:
        return self._call(core.positions())

    def get_holdings(self) -> list[dict[str, Any]]:
        return self._call(core.holdings())

    def get_gtt_orders(self, gtt_order_id: str | None = None) -> list[dict[str, Any]]:
        return self._call(core.gtt_orders(gtt_order_id))
