"""Asynchronous Upstox REST client: the request core plus ``httpx.AsyncClient`` sending.

Mirror of :mod:`airflow_provider_upstox.client.sync`; only sending and sleeping are awaited.

Every :class:`AsyncUpstoxClient` of one event loop sends through ONE shared ``httpx.AsyncClient``
per TLS setting (its connection pool and TLS context), not one of its own: an ``httpx.AsyncClient``
costs hundreds of KiB, and a triggerer runs a thousand streams, each holding a REST client for its
re-authorizations and snapshots. The shared client is reference counted: created by the first
client of a loop, closed with the last one, so nothing outlives its users (or their loop). Timeouts
travel with each request (:func:`~airflow_provider_upstox.client.core.build_request`), so clients
with different timeouts can share a pool.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx
import tenacity
from tenacity.wait import wait_base

from airflow_provider_upstox.client import core
from airflow_provider_upstox.client.config import UpstoxClientConfig
from airflow_provider_upstox.client.retry import retry_options
from airflow_provider_upstox.client.sync import cached_ssl_context, shared_ssl_context, ssl_key

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called with each authorized URI; may be a coroutine function (Airflow's ``amask_secret``, which
#: unlike ``mask_secret`` cannot deadlock the supervisor channel from inside an event loop).
SecretCallback = Callable[[str], "Awaitable[None] | None"]


async def ashared_ssl_context(verify: bool = True) -> ssl.SSLContext:
    """The process-wide TLS context for *verify*, built in a worker thread the first time.

    Await this once before creating :class:`AsyncUpstoxClient` from an event loop that must not
    block (a triggerer's): the client itself then reuses the cached context and is cheap to create.
    """
    context = cached_ssl_context(verify)
    if context is None:
        context = await asyncio.to_thread(shared_ssl_context, verify)
    return context


#: Bounds of the shared pool: a thousand streams reconnecting at once queue on it (waiting counts
#: against the request's pool timeout) instead of opening a thousand sockets. No idle keep-alive
#: connections: measured against the simulator, which closes every connection after its answer
#: (``Connection: close``), a pool keeping 50 idle connections had 532 of 900 concurrent requests
#: end in ``PoolTimeout`` after 30 s, while without keep-alive all 900 succeeded, and 32
#: concurrent connections answered faster than 100. A stream makes ~6 requests per (re)connect,
#: so a fresh connection per request costs little.
SHARED_POOL_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=0)
#: Requests in the shared pool at once. The rest wait on an ``asyncio.Semaphore`` (FIFO) in front
#: of it, not in the pool's own queue: ``httpcore`` scans every queued request against every
#: connection each time one frees up, so 100 streams starting at once spent 42 s of CPU there
#: (profile of ``bench/stream_fleet.py``); the semaphore costs nothing per waiter.
SHARED_POOL_IN_FLIGHT = 32

_PoolKey = tuple[asyncio.AbstractEventLoop, tuple[bool, str | None, str | None]]


class _SharedHttp:
    """One ``httpx.AsyncClient`` and how many :class:`AsyncUpstoxClient` use it."""

    __slots__ = ("gate", "http", "users")

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.gate = asyncio.Semaphore(SHARED_POOL_IN_FLIGHT)
        self.users = 0


_shared_http: dict[_PoolKey, _SharedHttp] = {}


def _pool_key(verify: bool) -> _PoolKey:
    return asyncio.get_running_loop(), ssl_key(verify)


def _acquire_shared_http(verify: bool) -> tuple[_PoolKey, _SharedHttp]:
    """The running loop's shared client for *verify* (created on first use), one more user counted."""
    key = _pool_key(verify)
    entry = _shared_http.get(key)
    if entry is None or entry.http.is_closed:
        entry = _SharedHttp(
            httpx.AsyncClient(
                verify=shared_ssl_context(verify), limits=SHARED_POOL_LIMITS, follow_redirects=False
            )
        )
        _shared_http[key] = entry
    entry.users += 1
    return key, entry


async def _release_shared_http(key: _PoolKey, http: httpx.AsyncClient) -> None:
    """One user less; the last one closes the shared client."""
    entry = _shared_http.get(key)
    if entry is None or entry.http is not http:  # already replaced (closed under us): close ours
        await http.aclose()
        return
    entry.users -= 1
    if entry.users <= 0:
        del _shared_http[key]
        await http.aclose()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def shared_http_clients() -> int:
    """How many shared ``httpx.AsyncClient`` are open in this process (for tests and benches)."""
    return len(_shared_http)


class AsyncUpstoxClient:
    """Non-blocking client for the Upstox REST reads and the portfolio stream authorization.

    Same methods as :class:`~airflow_provider_upstox.client.UpstoxClient`, awaited. Use as an async
    context manager (or await :meth:`aclose`).

    :param on_secret: called (and awaited, if it returns an awaitable) with every authorized URI
        as soon as it is read.
    :param transport: an httpx transport of its own (for faults no real server can produce): the
        client then has its own ``httpx.AsyncClient`` instead of the loop's shared one.

    Create it inside the event loop that will use it to join that loop's shared pool (created
    outside any loop, it has a client of its own).
    """

    def __init__(
        self,
        config: UpstoxClientConfig,
        *,
        on_secret: SecretCallback | None = None,
        retry_wait: wait_base | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._on_secret = on_secret
        self._retry_wait = retry_wait
        self._pool_key: _PoolKey | None = None
        self._gate: asyncio.Semaphore | None = None
        self._closed = False
        if transport is not None or not _in_event_loop():
            self._http = httpx.AsyncClient(
                timeout=config.timeout,
                verify=shared_ssl_context(config.verify),
                transport=transport,
                follow_redirects=False,
            )
        else:
            self._pool_key, shared = _acquire_shared_http(config.verify)
            self._http, self._gate = shared.http, shared.gate

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    async def __aenter__(self) -> AsyncUpstoxClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Leave the shared pool (closing it if this was its last user); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pool_key is None:
            await self._http.aclose()
        else:
            await _release_shared_http(self._pool_key, self._http)

    async def _send(self, call: core.Call[T]) -> T:
        """One attempt: the only place this client touches the network."""
        request = core.build_request(self.config, call)
        try:
            if self._gate is None:
                response = await self._http.send(request)
            else:
                async with self._gate:  # the body is read before the slot is given back
                    response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise core.translate_transport_error(exc, call.path) from exc
        log.debug("%s %s -> HTTP %s", call.method, call.path, response.status_code)
        return core.parse_response(response, call, self.config.access_token)

    async def _call(self, call: core.Call[T]) -> T:
        async for attempt in tenacity.AsyncRetrying(**retry_options(self.config, self._retry_wait)):
            with attempt:
                return await self._send(call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def authorize_portfolio_stream(self, update_types: str | Iterable[str] | None = None) -> str:
        """See :meth:`UpstoxClient.authorize_portfolio_stream`."""
        call = core.authorize(update_types)
        uri = core.read_authorized_uri(await self._call(call))
        if self._on_secret is not None:
            result = self._on_secret(uri)
            if inspect.isawaitable(result):
                await result
        core.check_stream_uri(uri)
        log.info("Authorized the Upstox portfolio stream for %s", call.params["update_types"])
        return uri

    async def get_profile(self) -> dict[str, Any]:
        return await self._call(core.profile())

    async def get_order_book(self) -> list[dict[str, Any]]:
        return await self._call(core.order_book())

    async def get_order_details(self, order_id: str) -> dict[str, Any]:
        return await self._call(core.order_details(order_id))

    async def get_order_history(self, order_id: str) -> list[dict[str, Any]]:
        return await self._call(core.order_history(order_id))

    async def get_trades(self) -> list[dict[str, Any]]:
        return await self._call(core.trades())

    async def get_order_trades(self, order_id: str) -> list[dict[str, Any]]:
        return await self._call(core.order_trades(order_id))

    async def get_positions(self) -> list[dict[str, Any]]:
        return await self._call(core.positions())

    async def get_holdings(self) -> list[dict[str, Any]]:
        return await self._call(core.holdings())

    async def get_gtt_orders(self, gtt_order_id: str | None = None) -> list[dict[str, Any]]:
        return await self._call(core.gtt_orders(gtt_order_id))
