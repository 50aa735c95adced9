"""The simulator's route table: which handler answers which HTTP path.

Every HTTP path the simulator serves is one :class:`Route` in one :class:`Router`, filled by the
server from the route modules (``feed``, ``rest``, ``control_api``...). Each route module exports a
``routes(...)`` function returning its routes and receives only what its handlers need (a small
protocol of its own), so no route module imports the server and the server imports each of them
once. Adding endpoints is adding a module with a ``routes()`` function and one line in
:meth:`~airflow_provider_upstox.simulator.server.UpstoxSimulator.route_modules`.

A handler returns the :class:`Response` to send; ``None`` lets ``websockets`` go on with the
WebSocket handshake (only the stream's socket path does that).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import http as h


@dataclass(frozen=True)
class HttpRequest:
    """One parsed request as handlers see it."""

    method: str
    path: str  #: without the query string
    query: dict[str, list[str]]
    request: Request  #: the raw request (headers)
    conn: ServerConnection  #: the connection it came on (the socket handshake keys on it)
    body: bytes = b""  #: the request body (see :mod:`.request_body`)


Handler = Callable[[HttpRequest], Awaitable[Response | None]]

ANY_METHOD: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
GET: Final = frozenset({"GET"})


@dataclass(frozen=True)
class Route:
    """*handler* answers *path* (every path under it when *prefix*) for the given *methods*."""

    path: str
    handler: Handler
    methods: frozenset[str] = field(default=GET)
    prefix: bool = False


class Router:
    """Exact paths first, then the longest matching prefix; 404 / 405 in Upstox's error shape."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[Route] = []
        self.add(routes)

    def add(self, routes: Iterable[Route]) -> None:
        """Register *routes*.

        :raises ValueError: a path (or prefix) is already routed: two modules must not fight over it.
        """
        for route in routes:
            if route.path in self._exact or any(r.path == route.path for r in self._prefixes):
                raise ValueError(f"the simulator already routes {route.path!r}")
            if route.prefix:
                self._prefixes.append(route)
                self._prefixes.sort(key=lambda r: len(r.path), reverse=True)
            else:
                self._exact[route.path] = route

    def resolve(self, path: str) -> Route | None:
        route = self._exact.get(path)
        if route is not None:
            return route
        return next((r for r in self._prefixes if path.startswith(r.path)), None)

    @property
    def paths(self) -> list[str]:
        """Every routed path (prefixes end with ``/``), for logs and tests."""
        return sorted([*self._exact, *(r.path for r in self._prefixes)])

    async def dispatch(self, request: HttpRequest) -> Response | None:
        route = self.resolve(request.path)
        if route is None:
            return h.error(404, h.NOT_FOUND)
        if request.method not in route.methods:
            allowed = ", ".join(sorted(route.methods))
            return h.error(405, h.METHOD_NOT_ALLOWED, [("Allow", allowed)])
        return await route.handler(request)
