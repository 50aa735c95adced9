"""``UpstoxSimulator``: a local Upstox serving REST, authorize and the portfolio stream on one port.

One ``websockets`` server answers plain HTTP from ``process_request`` (REST reads, authorize, the
direct-connect redirect, the ``/_sim/`` control API) and upgrades only the single-use socket URL to
a WebSocket. The market model runs on its own clock in a task; each step's messages are encoded
once and appended to the outgoing queue of every connected client subscribed to their type. Each
client has one writer task (where stream faults are applied) and one idle-ping task.

Secrets: the token is never logged (only a masked prefix), and the authorized URL (whose ``code`` is
a credential) is never logged either; the websockets logger drops DEBUG records, since at DEBUG it
would log request paths (filtered out).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.auth import SimulatedAuth
from airflow_provider_upstox.simulator.control_api import ControlAPI
from airflow_provider_upstox.simulator.faults import SCENARIOS, Faults
from airflow_provider_upstox.simulator.model import Emitted, MarketModel
from airflow_provider_upstox.simulator.request_body import BodyReadingConnection
from airflow_provider_upstox.simulator.rest import REST_PATHS, rest_read

log = logging.getLogger(__name__)
# websockets logs request paths (with the code) at DEBUG: its logger for us drops DEBUG records.
_ws_log = logging.getLogger("airflow_provider_upstox.simulator.websockets")
_ws_log.addFilter(lambda record: record.levelno > logging.DEBUG)


def mask(secret: str) -> str:
    """First four characters and ``***``: enough to tell tokens apart in a log, useless to an attacker."""
    return f"{secret[:4]}***" if len(secret) > 8 else "***"


@dataclass
class Counters:
    """Ground-truth counters served under ``/_sim/state``."""

    sent: int = 0  #: model messages written to sockets (duplicates included)
    missed_while_away: int = 0  #: model messages produced while no client was connected
    not_subscribed: int = 0  #: produced while clients were connected, none subscribed to the type
    lost_on_disconnect: int = 0  #: queued for a client that went away before they were written
    lost_in_hang: int = 0  #: discarded while the hang fault was on
    dropped_connections: int = 0  #: connections dropped by a fault (close code or reset)
    duplicated: int = 0
    reordered: int = 0  #: messages sent out of their production order
    delayed: int = 0
    malformed_sent: int = 0
    unknown_type_sent: int = 0
    oversized_sent: int = 0
    pings_sent: int = 0
    authorizations: int = 0  #: successful authorize and direct-connect requests
    codes_issued: int = 0
    connections: int = 0  #: accepted WebSocket connections
    refused_handshakes: int = 0  #: socket handshakes refused (used/unknown code, injected)
    http_requests: int = 0
    injected_http_errors: int = 0
    unauthorized: int = 0  #: requests refused with 401 for a missing/wrong/expired token
    model_messages: int = 0
    model_steps: int = 0


@dataclass
class Client:
    """One connected stream client: its subscription and its outgoing queue."""

    ws: ServerConnection
    types: frozenset[str]
    pending: deque[tuple[float, bytes]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    model_sent: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    closing: bool = False


class UpstoxSimulator:
    """A local Upstox: ``async with UpstoxSimulator(token="t") as sim: ... sim.base_url``.

    :param token: the only access token accepted.
    :param seed: seeds the market model (same seed, same history) and the fault generator.
    :param scenario: a name of :data:`~airflow_provider_upstox.simulator.faults.SCENARIOS`.
    :param host: interface to bind; :param port: port to bind (0 = a free port).
    :param ping_interval: idle seconds after which the server pings a client (``None`` = scenario's).
    :param ping_timeout: seconds to wait for the pong before closing with 1011.
    :param code_ttl: seconds an authorized URL stays usable.
    :param user_id: the simulated account's user id.
    """

    def __init__(
        self,
        token: str,
        seed: int = 0,
        scenario: str = "default",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ping_interval: float | None = None,
        ping_timeout: float = 20.0,
        code_ttl: float = 300.0,
        user_id: str = "AB1234",
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.token = token
        self.seed = seed
        self.scenario = scenario
        self.host = host
        self.port = port
        self.user_id = user_id
        self.ping_timeout = ping_timeout
        self.code_ttl = code_ttl
        self._ping_interval_arg = ping_interval
        self.clients: list[Client] = []
        self.issued_codes: list[str] = []
        self._codes: dict[str, tuple[str, tuple[str, ...], float]] = {}
        self._handshake_types: dict[ServerConnection, tuple[str, ...]] = {}
        self._server: Server | None = None
        self._market_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.control_api = ControlAPI(self)
        self.auth = SimulatedAuth(self)  # login flows of docs/PROTOCOL.md §6 (issue 16)
        self._configure(seed, scenario)

    # ------------------------------------------------------------------ lifecycle

    def _configure(self, seed: int, scenario: str) -> None:
        preset = SCENARIOS[scenario]
        self.seed, self.scenario = seed, scenario
        self.model = MarketModel(seed, user_id=self.user_id)
        self.fault_rng = random.Random(f"faults-{seed}")
        self.counters = Counters()
        self.faults = Faults()
        self.faults.update(dict(preset.faults))
        self.ping_interval = (
            self._ping_interval_arg if self._ping_interval_arg is not None else preset.ping_interval
        )
        self.rate = preset.rate
        self.running = preset.rate > 0
        self.market_changed = asyncio.Event()

    async def __aenter__(self) -> UpstoxSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,  # our own idle pinger, which faults can silence
            close_timeout=2,
            max_size=2**20,
            write_limit=2**20,
            logger=_ws_log,
            create_connection=BodyReadingConnection,  # login POSTs carry bodies (issue 16)
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        self._market_task = asyncio.create_task(self._market_loop())
        log.info(
            "Upstox simulator on %s (token %s, seed %d, scenario %s)",
            self.base_url,
            mask(self.token),
            self.seed,
            self.scenario,
        )

    async def stop(self) -> None:
        for task in (self._market_task, self._expiry_task, *self._tasks):
            if task is not None:
                task.cancel()
        for client in list(self.clients):
            client.ws.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def control(self) -> Any:
        """An :class:`~airflow_provider_upstox.simulator.control.AsyncSimulatorControl` for this server."""
        from airflow_provider_upstox.simulator.control import AsyncSimulatorControl

        return AsyncSimulatorControl(self.base_url)

    # ------------------------------------------------------------------ market

    async def _market_loop(self) -> None:
        loop = asyncio.get_running_loop()
        debt, last = 0.0, loop.time()
        while True:
            if not self.running or self.rate <= 0:
                self.market_changed.clear()
                await self.market_changed.wait()
                debt, last = 0.0, loop.time()
                continue
            await asyncio.sleep(min(1.0 / self.rate, 0.05))
            if not self.running or self.rate <= 0:
                continue  # stopped (quiesce) while asleep: not one more step after "market stopped"
            now = loop.time()
            debt += (now - last) * self.rate
            last = now
            n = min(int(debt), 5000)
            debt -= n
            for _ in range(n):
                self.publish(self.model.step())

    def steps(self, count: int) -> int:
        """Advance the model *count* steps now; returns how many messages they produced."""
        produced = 0
        for _ in range(count):
            emitted = self.model.step()
            produced += len(emitted)
            self.publish(emitted)
        return produced

    def publish(self, emitted: list[Emitted]) -> None:
        """Queue each message for every subscribed client; count it as missed if no one is there."""
        c = self.counters
        c.model_steps += 1
        now = time.monotonic()
        for msg in emitted:
            c.model_messages += 1
            if not self.clients:
                c.missed_while_away += 1
                continue
            receivers = 0
            for client in self.clients:
                if msg.update_type in client.types and not client.closing:
                    client.pending.append((now, msg.frame))
                    client.wakeup.set()
                    receivers += 1
            if not receivers:
                c.not_subscribed += 1

    def flood(self, count: int) -> int:
        """Produce at least *count* model messages, all encoded before any is queued, then queue them."""
        batch: list[Emitted] = []
        while len(batch) < count:
            batch.extend(self.model.step())
            self.counters.model_steps += 1
        self.counters.model_steps -= 1  # publish() counts one
        self.publish(batch)
        return len(batch)

    async def quiesce(self, timeout: float = 10.0) -> bool:
        """Stop the market and wait until every client's queue is written; ``False`` on timeout."""
        self.running = False
        self.market_changed.set()
        deadline = time.monotonic() + timeout
        while any(c.pending for c in self.clients):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)  # let the last send leave the write buffer
        return True

    # ------------------------------------------------------------------ tokens and codes

    def token_expired(self) -> bool:
        expires = self.faults.token_expires_at
        return expires is not None and time.time() >= expires

    def token_ok(self, request: Request) -> bool:
        return not self.token_expired() and h.bearer_token(request) == self.token

    def schedule_token_expiry(self) -> None:
        """(Re)arm the task that closes open sockets when the token expires."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            self._expiry_task = None
        expires = self.faults.token_expires_at
        if expires is not None:
            self._expiry_task = asyncio.create_task(self._expire_at(expires))

    async def _expire_at(self, expires: float) -> None:
        await asyncio.sleep(max(0.0, expires - time.time()))
        log.info("simulated token expiry: closing %d stream connection(s)", len(self.clients))
        for client in list(self.clients):
            await self._drop(client, 1008, "token expired")

    def issue_url(self, request: Request, types: tuple[str, ...]) -> str:
        request_id, code = str(uuid.uuid4()), str(uuid.uuid4())
        self._codes[code] = (request_id, types, time.monotonic())
        self.issued_codes.append(code)
        self.counters.codes_issued += 1
        self.counters.authorizations += 1
        host = request.headers.get("Host") or f"{self.host}:{self.port}"
        return f"ws://{host}{h.SOCKET_PATH}?requestId={request_id}&code={code}"

    # ------------------------------------------------------------------ HTTP

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.counters.http_requests += 1
        parts = urlsplit(request.path)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        login = await self.auth.route(conn, request, path, query)  # issue 16
        if login is not None:
            return login
        if path.startswith("/_sim/"):
            return await self.control_api.handle(request.method, path, query)
        if path == h.SOCKET_PATH:
            return self._socket_handshake(conn, request, query)
        if request.method != "GET":
            return h.error(405, h.NOT_FOUND)
        if self.faults.rest_delay:
            await asyncio.sleep(self.faults.rest_delay)
        if path in (h.AUTHORIZE_PATH, h.DIRECT_PATH):
            return self._authorize(request, query, redirect=path == h.DIRECT_PATH)
        if path in REST_PATHS:
            return self._rest(request, path, query)
        return h.error(404, h.NOT_FOUND)

    def _injected(self, kind: str) -> Response | None:
        f = self.faults
        status, count = getattr(f, f"{kind}_fail_status"), getattr(f, f"{kind}_fail_count")
        if not status or count <= 0:
            return None
        setattr(f, f"{kind}_fail_count", count - 1)
        self.counters.injected_http_errors += 1
        return h.injected_error(status, f.retry_after)

    def _authorize(self, request: Request, query: dict[str, list[str]], *, redirect: bool) -> Response:
        injected = self._injected("authorize")
        if injected is not None:
            return injected
        if not self.token_ok(request):
            self.counters.unauthorized += 1
            return h.error(401, h.INVALID_TOKEN)
        types = h.parse_update_types(query.get("update_types"))
        if types is None:
            return h.error(400, h.INVALID_UPDATE_TYPES)
        url = self.issue_url(request, types)
        if redirect:
            return h.response(302, b"", "text/plain", [("Location", url)])
        # added by issue-3 helper: malformed authorize answers (Faults.authorize_response)
        malformed = self.faults.authorize_response
        if malformed == "not_json":
            return h.response(200, b"<html>upstream error</html>", "application/json")
        if malformed == "no_uri":
            return h.success({})
        if malformed == "status_error":
            return h.json_response(200, {"status": "error", "errors": []})
        if malformed == "non_ws_uri":
            url = "https" + url[url.index(":") :]
        keys = self.faults.authorize_keys
        data = {}
        if keys in ("both", "snake"):
            data["authorized_redirect_uri"] = url
        if keys in ("both", "camel"):
            data["authorizedRedirectUri"] = url
        return h.success(data)

    def _rest(self, request: Request, path: str, query: dict[str, list[str]]) -> Response:
        injected = self._injected("rest")
        if injected is not None:
            return injected
        if not self.token_ok(request):
            self.counters.unauthorized += 1
            return h.error(401, h.INVALID_TOKEN)
        return rest_read(self.model, path, query)

    def _socket_handshake(
        self, conn: ServerConnection, request: Request, query: dict[str, list[str]]
    ) -> Response | None:
        if not h.is_websocket_upgrade(request):
            return h.response(426, b"WebSocket upgrade required\n", "text/plain", [("Upgrade", "websocket")])
        if self.faults.refuse_handshakes > 0:
            self.faults.refuse_handshakes -= 1
            self.counters.refused_handshakes += 1
            return h.error(500, h.SERVER_ERROR)
        code = (query.get("code") or [""])[0]
        entry = self._codes.pop(code, None)
        request_id = (query.get("requestId") or [""])[0]
        if entry is None or entry[0] != request_id or time.monotonic() - entry[2] > self.code_ttl:
            self.counters.refused_handshakes += 1
            return h.error(403, h.CODE_REFUSED)
        if self.token_expired():
            self.counters.refused_handshakes += 1
            return h.error(401, h.INVALID_TOKEN)
        self._handshake_types[conn] = entry[1]
        return None

    # ------------------------------------------------------------------ WebSocket

    async def _handler(self, ws: ServerConnection) -> None:
        from airflow_provider_upstox.simulator.sender import ping_loop, write_loop

        types = self._handshake_types.pop(ws, None)
        if types is None:  # cannot happen: only the socket path is upgraded
            await ws.close(1008, "not authorized")
            return
        client = Client(ws, frozenset(types))
        self.clients.append(client)
        self.counters.connections += 1
        log.info("stream client connected (%s); %d connected", ",".join(types), len(self.clients))
        if self.faults.hang:
            ws.transport.pause_reading()
        writer = asyncio.create_task(write_loop(self, client))
        pinger = asyncio.create_task(ping_loop(self, client))
        try:
            async for _ in ws:  # clients send nothing useful; reading keeps close frames flowing
                pass
        except ConnectionClosed:
            pass
        finally:
            self.clients.remove(client)
            writer.cancel()
            pinger.cancel()
            self.counters.lost_on_disconnect += len(client.pending)
            client.pending.clear()
            log.info("stream client disconnected; %d connected", len(self.clients))

    async def _drop(self, client: Client, mode: int | str, reason: str = "simulated drop") -> None:
        """Close a client with a close code, or abort its TCP connection with an RST for ``"reset"``."""
        if client.closing:
            return
        client.closing = True
        if mode == "reset":
            sock = client.ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.ws.transport.abort()
        else:
            task = asyncio.create_task(client.ws.close(int(mode), reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def set_hang(self, on: bool) -> None:
        for client in self.clients:
            if on:
                client.ws.transport.pause_reading()
            else:
                client.ws.transport.resume_reading()
                client.wakeup.set()

    def disconnect_all(self, mode: int | str) -> int:
        clients = list(self.clients)
        for client in clients:
            self.counters.dropped_connections += 1
            task = asyncio.create_task(self._drop(client, mode))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(clients)

    async def reset(self, seed: int | None = None, scenario: str | None = None) -> None:
        """Forget everything (model, faults, counters, codes) and close every stream connection."""
        if scenario is not None and scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        for client in list(self.clients):
            await self._drop(client, 1001, "simulator reset")
        self._codes.clear()
        self.issued_codes.clear()
        self._configure(self.seed if seed is None else seed, scenario or self.scenario)
        self.schedule_token_expiry()
        if self._market_task is not None:
            self._market_task.cancel()
            self._market_task = asyncio.create_task(self._market_loop())
