"""The HTTP side of the portfolio stream feed: authorize, direct connect, and the socket handshake.

Both ways onto the stream (``docs/PROTOCOL.md`` §1) end on the single-use socket URL issued here:
``GET .../authorize`` answers it as JSON, ``GET /v2/feed/portfolio-stream-feed`` redirects to it
(302) as the official SDK expects. The socket handshake spends the URL's ``code`` and remembers
the subscription for the connection, which the server takes when it accepts the WebSocket.

Secrets: the issued URL carries a credential (the ``code``) and is never logged.
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.connections import Counters
from airflow_provider_upstox.simulator.faults import Faults
from airflow_provider_upstox.simulator.routing import HttpRequest, Route


class FeedContext(Protocol):
    """What the feed endpoints read from the simulator."""

    @property
    def faults(self) -> Faults: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def code_ttl(self) -> float: ...
    def token_expired(self) -> bool: ...
    def account_for(self, request: Request) -> object | None:
        """The account *request*'s token belongs to (the socket URL is issued for it)."""

    async def guard(self, kind: str, request: Request) -> Response | None:
        """Delay, injected failure or 401 for a REST-like request of *kind*; ``None`` to go on."""


class FeedGate:
    """Issues single-use socket URLs and admits each one to exactly one WebSocket handshake."""

    def __init__(self, ctx: FeedContext) -> None:
        self.ctx = ctx
        #: every code ever issued (``GET /_sim/codes``, for leak tests)
        self.issued_codes: list[str] = []
        self._codes: dict[str, tuple[str, tuple[str, ...], float, object | None]] = {}
        self._subscriptions: dict[ServerConnection, tuple[tuple[str, ...], object | None]] = {}

    def routes(self) -> list[Route]:
        return [
            Route(h.AUTHORIZE_PATH, self.authorize),
            Route(h.DIRECT_PATH, self.direct_connect),
            Route(h.SOCKET_PATH, self.socket_handshake),
        ]

    def forget(self) -> None:
        """Invalidate every issued URL (simulator reset)."""
        self._codes.clear()
        self.issued_codes.clear()

    def take_subscription(self, conn: ServerConnection) -> tuple[tuple[str, ...], object | None] | None:
        """The update types a just-upgraded connection subscribed to, and the account its URL was
        issued for (``None``: it never handshook)."""
        return self._subscriptions.pop(conn, None)

    def issue_url(self, request: Request, types: tuple[str, ...]) -> str:
        ctx = self.ctx
        request_id, code = str(uuid.uuid4()), str(uuid.uuid4())
        self._codes[code] = (request_id, types, time.monotonic(), ctx.account_for(request))
        self.issued_codes.append(code)
        ctx.counters.codes_issued += 1
        ctx.counters.authorizations += 1
        host = request.headers.get("Host") or f"{ctx.host}:{ctx.port}"
        return f"ws://{host}{h.SOCKET_PATH}?requestId={request_id}&code={code}"

    async def _admit(self, req: HttpRequest) -> tuple[str, ...] | Response:
        """The subscribed update types of an authorize request, or the refusal to send."""
        refused = await self.ctx.guard("authorize", req.request)
        if refused is not None:
            return refused
        types = h.parse_update_types(req.query.get("update_types"))
        return h.error(400, h.INVALID_UPDATE_TYPES) if types is None else types

    async def authorize(self, req: HttpRequest) -> Response:
        """``GET .../authorize``: the socket URL as JSON (with the faults that malform the answer)."""
        types = await self._admit(req)
        if isinstance(types, Response):
            return types
        url = self.issue_url(req.request, types)
        malformed = self.ctx.faults.authorize_response
        if malformed == "not_json":
            return h.response(200, b"<html>upstream error</html>", "application/json")
        if malformed == "no_uri":
            return h.success({})
        if malformed == "status_error":
            return h.json_response(200, {"status": "error", "errors": []})
        if malformed == "non_ws_uri":
            url = "https" + url[url.index(":") :]
        keys = self.ctx.faults.authorize_keys
        data = {}
        if keys in ("both", "snake"):
            data["authorized_redirect_uri"] = url
        if keys in ("both", "camel"):
            data["authorizedRedirectUri"] = url
        return h.success(data)

    async def direct_connect(self, req: HttpRequest) -> Response:
        """``GET /v2/feed/portfolio-stream-feed``: a 302 to the socket URL (the official SDK's way)."""
        types = await self._admit(req)
        if isinstance(types, Response):
            return types
        return h.response(302, b"", "text/plain", [("Location", self.issue_url(req.request, types))])

    async def socket_handshake(self, req: HttpRequest) -> Response | None:
        """Spend the URL's code; ``None`` lets websockets upgrade the connection."""
        ctx = self.ctx
        if not h.is_websocket_upgrade(req.request):
            return h.response(426, b"WebSocket upgrade required\n", "text/plain", [("Upgrade", "websocket")])
        if ctx.faults.refuse_handshakes > 0:
            ctx.faults.refuse_handshakes -= 1
            ctx.counters.refused_handshakes += 1
            return h.error(500, h.SERVER_ERROR)
        code = (req.query.get("code") or [""])[0]
        entry = self._codes.pop(code, None)
        request_id = (req.query.get("requestId") or [""])[0]
        if entry is None or entry[0] != request_id or time.monotonic() - entry[2] > ctx.code_ttl:
            ctx.counters.refused_handshakes += 1
            return h.error(403, h.CODE_REFUSED)
        if ctx.token_expired():
            ctx.counters.refused_handshakes += 1
            return h.error(401, h.INVALID_TOKEN)
        self._subscriptions[req.conn] = (entry[1], entry[3])
        return None
