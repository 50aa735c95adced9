"""``UpstoxSimulator``: a local Upstox serving REST, authorize and the portfolio stream on one port.

One ``websockets`` server answers plain HTTP from ``process_request`` through a route table
(:mod:`.routing`: the stream feed's endpoints in :mod:`.feed`, the REST reads in :mod:`.rest`, the
``/_sim/`` control API in :mod:`.control_api`) and upgrades only the single-use socket URL to a
WebSocket. The market model runs on its own clock in a task; each step's messages are encoded once
and appended to the outgoing queue of every connected client subscribed to their type.

Who owns what: this server owns the connections (:class:`~.connections.Client`, accepted, listed,
published to and forgotten here), the model, the fault switches and the counters. Each client has
one writer task (where stream faults are applied) and one idle-ping task, both in :mod:`.sender`,
which read the server through the small ``SenderContext`` protocol; the route modules get the
server as their own small protocols. None of them imports this module.

Accounts: by default one account (``token``, ``user_id``); ``accounts={token: user_id, ...}`` adds
more, each with its own market model, stream clients and rate limits (:mod:`.accounts`), as real
Upstox serves many users on one host. Which account a bearer token belongs to is decided in ONE
method, :meth:`UpstoxSimulator.account_for`.

Secrets: the token is never logged (only a masked prefix), and the authorized URL (whose ``code`` is
a credential) is never logged either; the websockets logger drops DEBUG records, since at DEBUG it
would log request paths (filtered out).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import history, postbacks, rest
from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.accounts import Account, new_account
from airflow_provider_upstox.simulator.auth import SimulatedAuth
from airflow_provider_upstox.simulator.connections import Client, Counters
from airflow_provider_upstox.simulator.control_api import ControlAPI
from airflow_provider_upstox.simulator.faults import SCENARIOS, Faults
from airflow_provider_upstox.simulator.feed import FeedGate
from airflow_provider_upstox.simulator.history import RequestLog
from airflow_provider_upstox.simulator.model import Emitted, MarketModel
from airflow_provider_upstox.simulator.postbacks import PostbackSender
from airflow_provider_upstox.simulator.request_body import BodyReadingConnection
from airflow_provider_upstox.simulator.routing import HttpRequest, Route, Router
from airflow_provider_upstox.simulator.sender import ping_loop, write_loop

__all__ = ["Client", "Counters", "UpstoxSimulator", "mask"]

log = logging.getLogger(__name__)
# websockets logs request paths (with the code) at DEBUG: its logger for us drops DEBUG records.
_ws_log = logging.getLogger("airflow_provider_upstox.simulator.websockets")
_ws_log.addFilter(lambda record: record.levelno > logging.DEBUG)


def mask(secret: str) -> str:
    """First four characters and ``***``: enough to tell tokens apart in a log, useless to an attacker."""
    return f"{secret[:4]}***" if len(secret) > 8 else "***"


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
    :param accounts: more accounts, ``{token: user_id}``, each with its own market (seeded from
        *seed* and its position), stream clients and rate-limit counts.
    :param enforce_rate_limits: answer 429 when an account goes over the Upstox rate limits
        (``docs/PROTOCOL.md`` §8). Default: only with *accounts* (the single-account simulator only
        counts, so that fault tests may hammer it).
    :param stamp_frames: add ``"sim_sent_us"`` (wall clock, microseconds) to every stream frame as it
        is written, for latency benches (clients keep unknown fields).
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
        accounts: Mapping[str, str] | None = None,
        enforce_rate_limits: bool | None = None,
        stamp_frames: bool = False,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.token = token
        self.seed = seed
        self.scenario = scenario
        self.host = host
        self.port = port
        self.user_id = user_id
        self._extra_accounts = dict(accounts or {})
        if token in self._extra_accounts:
            raise ValueError("an extra account reuses the primary account's token")
        self.enforce_rate_limits = (
            bool(self._extra_accounts) if enforce_rate_limits is None else enforce_rate_limits
        )
        self.stamp_frames = stamp_frames
        self.ping_timeout = ping_timeout
        self.code_ttl = code_ttl
        self._ping_interval_arg = ping_interval
        #: the connected stream clients: the server alone adds and removes them
        self.clients: list[Client] = []
        self.feed = FeedGate(self)
        self._server: Server | None = None
        self._market_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._configure(seed, scenario)
        self.auth = SimulatedAuth(self)  # login flows of docs/PROTOCOL.md §6 (issue 16)
        self.postbacks = PostbackSender(seed)  # simulator/postbacks.py: the webhook channel
        self.router = Router()
        for routes in self.route_modules():
            self.router.add(routes)

    def route_modules(self) -> list[Iterable[Route]]:
        """The routes of every route module (see :mod:`.routing`): one line per module.

        Each module gets the simulator as the small protocol it declares (``FeedContext``,
        ``RestContext``, ``ControlTarget``...), never the server module itself.
        """
        return [
            self.feed.routes(),
            rest.routes(self),
            history.routes(self),
            postbacks.routes(self),
            ControlAPI(self).routes(),
            self.auth.routes(),
        ]

    # ------------------------------------------------------------------ lifecycle

    def _configure(self, seed: int, scenario: str) -> None:
        preset = SCENARIOS[scenario]
        self.seed, self.scenario = seed, scenario
        self.accounts: dict[str, Account] = {}
        everyone = {self.token: self.user_id, **self._extra_accounts}
        for index, (token, user_id) in enumerate(everyone.items()):
            self.accounts[token] = new_account(
                token, user_id, seed, index, enforce_limits=self.enforce_rate_limits
            )
        self.primary = self.accounts[self.token]
        self.model: MarketModel = self.primary.model
        self.fault_rng = random.Random(f"faults-{seed}")
        self.counters = Counters()
        self.requests = RequestLog(lambda: self.accounts.values(), enforce=self.enforce_rate_limits)
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
            create_connection=BodyReadingConnection,  # the login POSTs carry bodies (issue 16)
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
        self.postbacks.close()
        for task in (self._market_task, self._expiry_task):
            if task is not None:
                task.cancel()
        for client in list(self.clients):
            client.abort()
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
        """Step every account's market at ``rate`` steps/s each (accounts keep their own phase)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            if not self.running or self.rate <= 0:
                self.market_changed.clear()
                await self.market_changed.wait()
                last = loop.time()
                continue
            await asyncio.sleep(min(1.0 / self.rate, 0.05))
            if not self.running or self.rate <= 0:
                continue  # stopped (quiesce) while asleep: not one more step after "market stopped"
            now = loop.time()
            owed = (now - last) * self.rate
            last = now
            for account in self.accounts.values():
                account.debt += owed
                n = min(int(account.debt), 5000)
                account.debt -= n
                for _ in range(n):
                    self.publish(account.model.step(), account)

    def steps(self, count: int) -> int:
        """Advance the model *count* steps now; returns how many messages they produced."""
        produced = 0
        for _ in range(count):
            emitted = self.model.step()
            produced += len(emitted)
            self.publish(emitted)
        return produced

    def publish(self, emitted: list[Emitted], account: Account | None = None) -> None:
        """Queue each message for every subscribed client of *account* (default: the primary one);
        count it as missed if no one is there. Postbacks go out whether or not a socket is open."""
        self.postbacks.offer(emitted)
        c = self.counters
        c.model_steps += 1
        now = time.monotonic()
        account = account or self.primary
        clients = account.clients
        account.messages += len(emitted)
        for msg in emitted:
            c.model_messages += 1
            if not clients:
                c.missed_while_away += 1
                continue
            receivers = 0
            for client in clients:
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

    def account_for(self, request: Request) -> Account | None:
        """The account whose valid token authorizes *request*; ``None``: no, wrong or expired token.

        The ONE place that maps a bearer token to an account (token rotation changes only this).
        """
        if self.token_expired():
            return None
        token = h.bearer_token(request)
        return None if token is None else self.accounts.get(token)

    def token_ok(self, request: Request) -> bool:
        return self.account_for(request) is not None

    def replace_token(self, token: str) -> None:
        """Token rotation (the login flows of :mod:`.auth`): the primary account's token becomes
        *token*; the old one is refused from then on, the account keeps its market and clients."""
        if token in self.accounts:
            raise ValueError("the new token already belongs to an account")
        self.primary.token = token
        self.accounts = {
            (token if account is self.primary else key): account for key, account in self.accounts.items()
        }
        self.token = token

    def model_for(self, request: Request) -> MarketModel:
        """The market of the account that *request* is authorized for (checked by :meth:`guard`)."""
        account = self.account_for(request)
        return (account or self.primary).model

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
            client.drop(1008, "token expired")

    @property
    def issued_codes(self) -> list[str]:
        """Every stream ``code`` issued since the last reset (for leak tests)."""
        return self.feed.issued_codes

    async def guard(self, kind: str, request: Request) -> Response | None:
        """The checks every REST-like request passes (``kind`` ``"authorize"`` or ``"rest"``).

        In order: the ``rest_delay`` fault, an injected failure (``<kind>_fail_status``), the token,
        the account's rate windows (:class:`~.accounts.RateLimiter`).
        :returns: the refusal to send, or ``None`` to go on.
        """
        f = self.faults
        if f.rest_delay:
            await asyncio.sleep(f.rest_delay)
        status, count = getattr(f, f"{kind}_fail_status"), getattr(f, f"{kind}_fail_count")
        if status and count > 0:
            setattr(f, f"{kind}_fail_count", count - 1)
            self.counters.injected_http_errors += 1
            return h.injected_error(status, f.retry_after)
        account = self.account_for(request)
        if account is None:
            self.counters.unauthorized += 1
            self.counters.unauthorized_paths = [
                *self.counters.unauthorized_paths[-19:],
                urlsplit(request.path).path,
            ]
            return h.error(401, h.INVALID_TOKEN)
        if not account.rate.hit(urlsplit(request.path).path, time.monotonic()):
            self.counters.rate_limited += 1
            return h.error(429, h.TOO_MANY_REQUESTS)
        return None

    # ------------------------------------------------------------------ HTTP

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.counters.http_requests += 1
        parts = urlsplit(request.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        # Method and body as BodyReadingConnection read them: websockets < 17 has no Request.method.
        assert isinstance(conn, BodyReadingConnection)
        method, body = conn.request_method, conn.request_body
        return await self.router.dispatch(HttpRequest(method, parts.path, query, request, conn, body))

    # ------------------------------------------------------------------ WebSocket

    async def _handler(self, ws: ServerConnection) -> None:
        subscription = self.feed.take_subscription(ws)
        if subscription is None:  # cannot happen: only the socket path is upgraded
            await ws.close(1008, "not authorized")
            return
        types, owner = subscription
        account = owner if isinstance(owner, Account) else self.primary
        client = Client(ws, frozenset(types))
        self.clients.append(client)
        account.clients.append(client)
        self.counters.connections += 1
        log.info("stream client connected (%s); %d connected", ",".join(types), len(self.clients))
        if self.faults.hang:
            client.pause_reading(True)
        writer = asyncio.create_task(write_loop(self, client))
        pinger = asyncio.create_task(ping_loop(self, client))
        try:
            async for _ in ws:  # clients send nothing useful; reading keeps close frames flowing
                pass
        except ConnectionClosed:
            pass
        finally:
            self.clients.remove(client)
            account.clients.remove(client)
            writer.cancel()
            pinger.cancel()
            self.counters.lost_on_disconnect += len(client.pending)
            client.pending.clear()
            log.info("stream client disconnected; %d connected", len(self.clients))

    # ------------------------------------------------------------------ control (see control_api)

    @property
    def connected(self) -> int:
        return len(self.clients)

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "scenario": self.scenario,
            "running": self.running,
            "rate": self.rate,
            "steps": self.model.steps,
            "connected": len(self.clients),
            "accounts": len(self.accounts),
        }

    def accounts_summary(self) -> list[dict[str, Any]]:
        """Per account: user id, connected clients, market steps and messages, REST rate counts."""
        return [account.summary() for account in self.accounts.values()]

    def ground_truth(self) -> dict[str, Any]:
        return self.model.ground_truth()

    def set_faults(self, changes: dict[str, Any], *, clear: bool = False) -> None:
        """Set fault switches (after resetting them all if *clear*), and apply what they change now:
        a hang pauses reading on every connection, a new token expiry is (re)armed, and every
        writer wakes up to look at the new switches.

        :raises ValueError: an unknown switch or a bad value (see :meth:`Faults.update`).
        """
        was_hanging, old_expiry = self.faults.hang, self.faults.token_expires_at
        if clear:
            self.faults = Faults()
        self.faults.update(changes)
        if self.faults.hang != was_hanging:
            for client in self.clients:
                client.pause_reading(self.faults.hang)
        if self.faults.token_expires_at != old_expiry:
            self.schedule_token_expiry()
        for client in self.clients:
            client.wakeup.set()

    def set_market(self, *, rate: float | None = None, running: bool | None = None) -> None:
        if rate is not None:
            self.rate = rate
        if running is not None:
            self.running = running
        self.market_changed.set()

    def disconnect_all(self, mode: int | str) -> int:
        clients = list(self.clients)
        for client in clients:
            self.counters.dropped_connections += 1
            client.drop(mode)
        return len(clients)

    async def reset(self, seed: int | None = None, scenario: str | None = None) -> None:
        """Forget everything (model, faults, counters, codes) and close every stream connection."""
        if scenario is not None and scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        for client in list(self.clients):
            client.drop(1001, "simulator reset")
        self.postbacks.configure({}, clear=True)
        self.feed.forget()
        self._configure(self.seed if seed is None else seed, scenario or self.scenario)
        self.schedule_token_expiry()
        if self._market_task is not None:
            self._market_task.cancel()
            self._market_task = asyncio.create_task(self._market_loop())
