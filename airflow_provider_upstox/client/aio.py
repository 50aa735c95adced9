"""Asynchronous Upstox REST client: the request core plus ``httpx.AsyncClient`` sending.

Mirror of :mod:`airflow_provider_upstox.client.sync`; only sending and sleeping are awaited.
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
from airflow_provider_upstox.client.sync import cached_ssl_context, shared_ssl_context

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


class AsyncUpstoxClient:
    """Non-blocking client for the Upstox REST reads and the portfolio stream authorization.

    Same methods as :class:`~airflow_provider_upstox.client.UpstoxClient`, awaited. Use as an async
    context manager (or await :meth:`aclose`).

    :param on_secret: called (and awaited, if it returns an awaitable) with every authorized URI
        as soon as it is read.
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
        # The shared context: creating a client no longer loads the CA bundle (see shared_ssl_context).
        self._http = httpx.AsyncClient(
            timeout=config.timeout,
            verify=shared_ssl_context(config.verify),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    async def __aenter__(self) -> AsyncUpstoxClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: core.Call[T]) -> T:
        """One attempt: the only place this client touches the network."""
        request = core.build_request(self.config, call)
        try:
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
