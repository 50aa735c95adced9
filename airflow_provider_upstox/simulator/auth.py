"""The simulator's login: OAuth dialog, code exchange, access-token request and notifier (§6).

``docs/PROTOCOL.md`` §6 describes the real flows; this module plays Upstox's side of them for one
app (``client_id``/``client_secret``/``redirect_uri``, set with :class:`AuthSettings` or the control
API) and the simulator's one account:

- ``GET /v2/login/authorization/dialog``: the user "logs in" at once; 302 to the redirect URI with a
  single-use ``code`` and the caller's ``state``.
- ``POST /v2/login/authorization/token`` (form): the code for a new token (flat answer: profile and
  ``access_token``). The code is spent whether the exchange works or not.
- ``POST /v3/login/auth/token/request/{client_id}`` (JSON ``client_secret``): a pending request the
  control API approves (a token is issued and the documented notifier payload POSTed to
  ``notifier_url``) or rejects (nothing is sent, as on Upstox).

A new token replaces the simulator's accepted token (the old one is refused from then on: the
simulator's choice; Upstox documents no overlap) and expires at ``expire_daily_at`` India time
(default 03:30). Control API (query parameters JSON-encoded, like the rest of ``/_sim/``):

- ``GET /_sim/auth``: settings (no secret), pending requests, issued count, the current token's
  fingerprint and expiry, notifier deliveries.
- ``POST /_sim/auth/config?client_id=&client_secret=&redirect_uri=&notifier_url=&expire_daily_at=``
  ``&request_ttl=&code_ttl=``: change the app.
- ``POST /_sim/auth/approve?request_id=`` (default: the latest pending) and ``/_sim/auth/reject``.
- ``POST /_sim/auth/expire?at=<epoch s>``: the current token expires now (or at ``at``).

Error codes marked below are the simulator's choice: Upstox does not document them for these cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from websockets.http11 import Request, Response

from airflow_provider_upstox.simulator import http as h
from airflow_provider_upstox.simulator.control_api import _params
from airflow_provider_upstox.simulator.faults import Faults
from airflow_provider_upstox.simulator.rest import _profile
from airflow_provider_upstox.simulator.routing import ANY_METHOD, HttpRequest, Route


class AuthContext(Protocol):
    """What the login side needs from the simulator: the accepted token, the account, the expiry."""

    token: str
    user_id: str

    @property
    def faults(self) -> Faults: ...
    def schedule_token_expiry(self) -> None:
        """(Re)arm the closing of stream sockets at ``faults.token_expires_at``."""


log = logging.getLogger(__name__)

DIALOG_PATH: Final = "/v2/login/authorization/dialog"
CODE_EXCHANGE_PATH: Final = "/v2/login/authorization/token"
TOKEN_REQUEST_PREFIX: Final = "/v3/login/auth/token/request/"
CONTROL_PREFIX: Final = "/_sim/auth"
IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")

# Simulator's choice of codes (assumption: not documented for these cases).
BAD_CLIENT: Final = ("UDAPI100069", "Check your 'client_id' and 'client_secret'")
BAD_REDIRECT: Final = ("UDAPI100068", "Check your 'redirect_uri'")
BAD_CODE: Final = ("UDAPI100057", "Invalid Auth code")
BAD_REQUEST: Final = ("UDAPI1026", "Required parameter is missing")


def fingerprint(token: str) -> str:
    """The same short SHA-256 fingerprint the provider's hook uses: compare tokens without showing them."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def next_time_of_day(now: float, hh_mm: str) -> float:
    """Epoch seconds of the first *hh_mm* India time strictly after *now*."""
    hour, minute = (int(part) for part in hh_mm.split(":"))
    local = datetime.fromtimestamp(now, IST)
    at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at <= local:
        at += timedelta(days=1)
    return at.timestamp()


@dataclass
class AuthSettings:
    """The simulated app. An empty ``redirect_uri`` accepts any http(s) redirect URI."""

    client_id: str = "sim-client-id"
    client_secret: str = field(default="sim-client-secret", repr=False)
    redirect_uri: str = ""
    notifier_url: str | None = None
    expire_daily_at: str = "03:30"
    request_ttl: float = 600.0
    code_ttl: float = 120.0


@dataclass
class PendingRequest:
    request_id: str
    authorization_expiry: int  # epoch ms


class SimulatedAuth:
    """Upstox's login side for one simulator (see the module docstring)."""

    def __init__(self, sim: AuthContext, settings: AuthSettings | None = None) -> None:
        self.sim = sim
        self.settings = settings or AuthSettings()
        self.pending: list[PendingRequest] = []
        self.deliveries: list[dict[str, Any]] = []
        self.issued = 0
        self.rejected = 0
        self._codes: dict[str, tuple[str, float]] = {}  # code -> (redirect_uri, issued monotonic)

    # ------------------------------------------------------------------ tokens

    def issue_token(self) -> dict[str, Any]:
        """A new token for the account: it replaces the accepted one and expires at the daily time."""
        now = time.time()
        token = f"sim-{secrets.token_urlsafe(24)}"
        expires = next_time_of_day(now, self.settings.expire_daily_at)
        self.sim.token = token
        self.sim.faults.token_expires_at = expires
        self.sim.schedule_token_expiry()
        self.issued += 1
        log.info("simulator issued a new access token %s, expires %s", fingerprint(token), _ist(expires))
        return {
            "access_token": token,
            "issued_at": int(now * 1000),
            "expires_at": int(expires * 1000),
        }

    def expire_now(self, at: float | None = None) -> float:
        """Let the current token expire now (or at epoch seconds *at*): REST 401s, streams closed."""
        when = time.time() if at is None else float(at)
        self.sim.faults.token_expires_at = when
        self.sim.schedule_token_expiry()
        return when

    # ------------------------------------------------------------------ Upstox endpoints

    def routes(self) -> list[Route]:
        """The login endpoints and ``/_sim/auth`` (see :mod:`.routing`)."""

        async def upstox(req: HttpRequest) -> Response:
            return await self.handle(req.method, req.request, req.path, req.body)

        async def control(req: HttpRequest) -> Response:
            return await self.control(req.method, req.path, _params(req.query))

        return [
            Route(DIALOG_PATH, upstox),
            Route(CODE_EXCHANGE_PATH, upstox, methods=frozenset({"POST"})),
            Route(TOKEN_REQUEST_PREFIX, upstox, methods=frozenset({"POST"}), prefix=True),
            Route(CONTROL_PREFIX, control, methods=ANY_METHOD, prefix=True),
        ]

    async def handle(self, method: str, request: Request, path: str, body: bytes) -> Response:
        query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
        if path == DIALOG_PATH and method == "GET":
            return self._dialog(query)
        if path == CODE_EXCHANGE_PATH and method == "POST":
            return self._exchange(body)
        if path.startswith(TOKEN_REQUEST_PREFIX) and method == "POST":
            return self._token_request(path[len(TOKEN_REQUEST_PREFIX) :], request, body)
        return h.error(405, h.NOT_FOUND)

    def _redirect_ok(self, redirect_uri: str) -> bool:
        if self.settings.redirect_uri:
            return redirect_uri == self.settings.redirect_uri
        return urlsplit(redirect_uri).scheme in ("http", "https")

    def _dialog(self, query: dict[str, list[str]]) -> Response:
        one = {key: values[-1] for key, values in query.items()}
        if one.get("client_id") != self.settings.client_id:
            return h.error(400, BAD_CLIENT)
        redirect_uri = one.get("redirect_uri", "")
        if not self._redirect_ok(redirect_uri) or one.get("response_type") != "code":
            return h.error(400, BAD_REDIRECT)
        code = secrets.token_urlsafe(6)
        self._codes[code] = (redirect_uri, time.monotonic())
        params = {"code": code}
        if "state" in one:
            params["state"] = one["state"]
        sep = "&" if urlsplit(redirect_uri).query else "?"
        return h.response(302, b"", "text/plain", [("Location", f"{redirect_uri}{sep}{urlencode(params)}")])

    def _exchange(self, body: bytes) -> Response:
        form = {key: values[-1] for key, values in parse_qs(body.decode("latin-1")).items()}
        entry = self._codes.pop(form.get("code", ""), None)  # spent whether the exchange works or not
        if form.get("client_id") != self.settings.client_id or not secrets.compare_digest(
            form.get("client_secret", ""), self.settings.client_secret
        ):
            return h.error(401, BAD_CLIENT)
        if form.get("grant_type") != "authorization_code":
            return h.error(400, BAD_REQUEST)
        if entry is None or time.monotonic() - entry[1] > self.settings.code_ttl:
            return h.error(400, BAD_CODE)
        if form.get("redirect_uri") != entry[0]:
            return h.error(400, BAD_REDIRECT)
        issued = self.issue_token()
        answer = {**_profile(self.sim.user_id), "access_token": issued["access_token"]}
        return h.json_response(200, {**answer, "extended_token": None})

    def _token_request(self, client_id: str, request: Request, body: bytes) -> Response:
        if "json" not in (request.headers.get("Content-Type") or "").lower():
            return h.error(415, BAD_REQUEST)
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return h.error(400, BAD_REQUEST)
        secret = payload.get("client_secret") if isinstance(payload, dict) else None
        if client_id != self.settings.client_id or not isinstance(secret, str):
            return h.error(401, BAD_CLIENT)
        if not secrets.compare_digest(secret, self.settings.client_secret):
            return h.error(401, BAD_CLIENT)
        expiry = int((time.time() + self.settings.request_ttl) * 1000)
        self.pending.append(PendingRequest(str(uuid.uuid4()), expiry))
        return h.success({"authorization_expiry": str(expiry), "notifier_url": self.settings.notifier_url})

    # ------------------------------------------------------------------ control API

    async def control(self, method: str, path: str, params: dict[str, Any]) -> Response:
        name = path[len(CONTROL_PREFIX) :].strip("/")
        if method == "GET" and name == "":
            return h.json_response(200, self.state())
        if method != "POST":
            return h.json_response(405, {"status": "error", "message": "use POST"})
        if name == "config":
            return self._configure(params)
        if name == "expire":
            return h.json_response(200, {"expires_at": self.expire_now(params.get("at"))})
        if name in ("approve", "reject"):
            pending = self._take_pending(params.get("request_id"))
            if pending is None:
                return h.json_response(404, {"status": "error", "message": "no pending token request"})
            if name == "reject":
                self.rejected += 1
                return h.json_response(200, {"rejected": pending.request_id})
            return h.json_response(200, await self._approve())
        return h.json_response(404, {"status": "error", "message": f"unknown control {name!r}"})

    def _configure(self, params: dict[str, Any]) -> Response:
        known = {f for f in AuthSettings.__dataclass_fields__}
        unknown = sorted(set(params) - known)
        if unknown:
            return h.json_response(400, {"status": "error", "message": f"unknown settings {unknown}"})
        for key, value in params.items():
            setattr(self.settings, key, value)
        return h.json_response(200, self.state())

    def _take_pending(self, request_id: Any) -> PendingRequest | None:
        now_ms = time.time() * 1000
        self.pending = [p for p in self.pending if p.authorization_expiry > now_ms]
        for pending in reversed(self.pending):
            if request_id is None or pending.request_id == request_id:
                self.pending.remove(pending)
                return pending
        return None

    async def _approve(self) -> dict[str, Any]:
        """Issue the token and POST the documented notifier payload (§6), as Upstox does on approval."""
        issued = self.issue_token()
        payload = {
            "client_id": self.settings.client_id,
            "user_id": self.sim.user_id,
            "access_token": issued["access_token"],
            "token_type": "Bearer",
            "expires_at": str(issued["expires_at"]),
            "issued_at": str(issued["issued_at"]),
            "message_type": "access_token",
        }
        delivery: dict[str, Any] = {"fingerprint": fingerprint(issued["access_token"]), "status": None}
        url = self.settings.notifier_url
        if url:
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    delivery["status"] = (await client.post(url, json=payload)).status_code
            except httpx.HTTPError as exc:
                delivery["error"] = type(exc).__name__
        self.deliveries.append(delivery)
        return delivery

    def state(self) -> dict[str, Any]:
        s = self.settings
        expires = self.sim.faults.token_expires_at
        return {
            "client_id": s.client_id,
            "redirect_uri": s.redirect_uri,
            "notifier_url": s.notifier_url,
            "expire_daily_at": s.expire_daily_at,
            "request_ttl": s.request_ttl,
            "pending": [p.request_id for p in self.pending],
            "issued": self.issued,
            "rejected": self.rejected,
            "token_fingerprint": fingerprint(self.sim.token),
            "token_expires_at": expires,
            "deliveries": list(self.deliveries),
        }


def _ist(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, IST).strftime("%Y-%m-%d %H:%M IST")
