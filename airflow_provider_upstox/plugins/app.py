"""The token plugin's FastAPI app, mounted by the API server under :data:`URL_PREFIX`.

Routes (relative to the prefix):

- ``GET /tokens``: the page (each ``upstox`` connection the user may read, its token state, and a
  *Log in to Upstox* button where the user may edit it). ``GET /api/connections``: the same as JSON.
- ``POST /oauth/start/{connection_id}``: only for users allowed to edit that connection (Airflow's
  own ``requires_access_connection("PUT")``); 303 to Upstox's dialog with a signed ``state``.
- ``GET /oauth/callback?code=&state=``: the logged-in user who started the login, within 10 minutes,
  once; the code is exchanged and the token written to the connection.
- ``POST /notifier/{key}``: Upstox's notifier webhook, unauthenticated (see ``notifier.py``).
- ``POST /postback/{key}``: Upstox's order/GTT postbacks, unauthenticated, one key per connection
  (see ``postback.py``).
- ``GET /streams``: the *Streams* page (every readable connection's stream health and token, worst
  first; ``?only=problems|<health>&offset=&limit=``). ``GET /api/streams``: the same as JSON
  (see ``streams.py``; the API server also sends it as metrics, see ``health_metrics.py``).

Authentication is Airflow's: ``get_user`` reads the same JWT (cookie or bearer) as the core API,
and authorization asks the configured auth manager, so the plugin follows whatever the deployment
uses (simple, FAB, Keycloak...). Nothing here returns or logs a token or the app secret.

No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime, and
they name a dependency local to :func:`create_app`.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from airflow_provider_upstox import postbacks
from airflow_provider_upstox.client import login
from airflow_provider_upstox.exceptions import UpstoxError
from airflow_provider_upstox.hooks.upstox import login_app_from_extra, login_endpoint
from airflow_provider_upstox.plugins import connections as store
from airflow_provider_upstox.plugins import health_metrics, keys, notifier, streams
from airflow_provider_upstox.plugins.page import result_page, tokens_page
from airflow_provider_upstox.plugins.postback import PostbackEndpoint, postback_key
from airflow_provider_upstox.plugins.status import statuses
from airflow_provider_upstox.plugins.streams_page import streams_page

log = logging.getLogger(__name__)

URL_PREFIX: Final = "/upstox"
UI_ROUTE: Final = "upstox-tokens"
STREAMS_UI_ROUTE: Final = "upstox-streams"


def _security() -> tuple[Any, Any]:
    from airflow.api_fastapi.core_api.security import get_user, requires_access_connection

    return get_user, requires_access_connection


def _authorized(user: Any, conn_id: str, method: Literal["GET", "PUT"]) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails

    return bool(
        get_auth_manager().is_authorized_connection(
            method=method, details=ConnectionDetails(conn_id=conn_id), user=user
        )
    )


def _app_url(request: Request) -> str:
    """This app's external URL: scheme, host, Airflow's root path, and the mount prefix."""
    root = str(request.base_url).rstrip("/")
    return root if root.endswith(URL_PREFIX) else root + URL_PREFIX


def _page_url(request: Request) -> str:
    return _app_url(request)[: -len(URL_PREFIX)] + f"/plugin/{UI_ROUTE}"


def _with_redirect(app: login.LoginApp, request: Request) -> login.LoginApp:
    """*app*, its redirect URI defaulting to this plugin's callback."""
    if app.redirect_uri:
        return app
    return login.LoginApp(app.client_id, app.client_secret, f"{_app_url(request)}/oauth/callback")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status)


def create_app() -> FastAPI:
    get_user, requires_access_connection = _security()
    user_dep = Annotated[Any, Depends(get_user)]
    postback = PostbackEndpoint()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Airflow's API server enters the lifespan of every mounted plugin app.
        await postback.resume()
        yield
        await postback.aclose()

    app = FastAPI(title="Upstox tokens", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    deliveries = notifier.TokenBucket(capacity=10, rate=0.2)
    wrong_keys = notifier.TokenBucket(capacity=20, rate=1.0)

    async def _readable(user: Any) -> tuple[list[Any], set[str]]:
        conns = await asyncio.to_thread(store.list_connections)
        readable = [c for c in conns if _authorized(user, c.conn_id, "GET")]
        return readable, {c.conn_id for c in readable if _authorized(user, c.conn_id, "PUT")}

    @app.get("/tokens", response_class=HTMLResponse)
    async def tokens(request: Request, user: user_dep) -> HTMLResponse:
        readable, editable = await _readable(user)
        rows = await statuses(readable)
        root = _app_url(request)
        notifier_url = f"{root}/notifier/{keys.notifier_key()}" if editable else None
        html = tokens_page(rows, editable, root, f"{root}/oauth/callback", notifier_url)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/connections")
    async def api_connections(request: Request, user: user_dep, probe: bool = True) -> JSONResponse:
        readable, editable = await _readable(user)
        root = _app_url(request)
        rows = [
            {
                **s.as_dict(),
                "editable": s.conn_id in editable,
                # the URL to register as the app's postback (webhook) URL: only for editors
                "postback_url": f"{root}/postback/{postback_key(s.conn_id)}"
                if s.conn_id in editable
                else None,
            }
            for s in await statuses(readable, probe=probe)
        ]
        return JSONResponse({"connections": rows}, headers={"Cache-Control": "no-store"})

    @app.post("/oauth/start/{connection_id}", dependencies=[Depends(requires_access_connection("PUT"))])
    async def oauth_start(connection_id: str, request: Request, user: user_dep) -> Response:
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
            return _error(403, "cross-site login start refused")
        conn = await asyncio.to_thread(store.get_connection, connection_id)
        if conn is None:
            return _error(404, f"no upstox connection {connection_id!r}")
        if conn.read_only_reason:
            return _error(409, f"connection {connection_id!r} cannot be written: {conn.read_only_reason}")
        try:
            app_ = login_app_from_extra(conn.conn_id, conn.extra)
            base_url, _, _ = login_endpoint(conn.conn_id, conn.host, conn.port, conn.extra)
        except ValueError as exc:
            return _error(400, str(exc))
        app_ = _with_redirect(app_, request)
        state = keys.make_state(conn.conn_id, str(user.get_id()))
        return RedirectResponse(login.authorization_dialog_url(base_url, app_, state), status_code=303)

    @app.get("/oauth/callback", response_class=HTMLResponse)
    async def oauth_callback(
        request: Request, user: user_dep, code: str = "", state: str = ""
    ) -> HTMLResponse:
        back = _page_url(request)
        _hide_code_from_access_log(request)

        def fail(status: int, message: str) -> HTMLResponse:
            log.warning("Upstox login callback refused: %s", message)
            return HTMLResponse(result_page("Login refused", message, back, False), status_code=status)

        try:
            checked = keys.read_state(state)
        except ValueError as exc:
            return fail(400, str(exc))
        if checked.user != str(user.get_id()):
            return fail(403, "this login was started by another user")
        if not _authorized(user, checked.conn_id, "PUT"):
            return fail(403, f"you may not edit connection {checked.conn_id!r}")
        if not code or len(code) > 512:
            return fail(400, "Upstox sent no authorization code")
        conn = await asyncio.to_thread(store.get_connection, checked.conn_id)
        if conn is None or conn.read_only_reason:
            return fail(409, f"connection {checked.conn_id!r} cannot be written")
        try:
            await asyncio.to_thread(store.spend_oauth_state, conn.conn_id, checked.issued_at)
        except (store.StaleToken, store.NotWritable) as exc:
            return fail(409, str(exc))
        try:
            app_ = login_app_from_extra(conn.conn_id, conn.extra)
            if not app_.redirect_uri:
                app_ = login.LoginApp(
                    app_.client_id, app_.client_secret, f"{_app_url(request)}/oauth/callback"
                )
            base_url, timeout, verify = login_endpoint(conn.conn_id, conn.host, conn.port, conn.extra)
            answer = await login.asend(
                login.code_exchange_request(base_url, app_, code), timeout=timeout, verify=verify
            )
            issued = login.parse_code_exchange(answer)
        except (UpstoxError, ValueError) as exc:
            return fail(502, f"the code exchange failed: {exc}")
        if conn.expected_user and issued.user_id != conn.expected_user:
            return fail(
                409, f"logged in as {issued.user_id}, but the connection expects {conn.expected_user}"
            )
        try:
            await asyncio.to_thread(
                store.write_token,
                conn.conn_id,
                issued.access_token,
                user_id=issued.user_id,
                issued_at=issued.issued_at,
                expires_at=issued.expires_at,
                source="oauth",
            )
        except (store.StaleToken, store.NotWritable) as exc:
            return fail(409, str(exc))
        log.info("Upstox login: new access token for user %s written to %s", issued.user_id, conn.conn_id)
        message = f"Connection {conn.conn_id} now holds a token for {issued.user_id}."
        return HTMLResponse(result_page("Token renewed", message, back, True))

    @app.post("/notifier/{key}")
    async def notifier_webhook(key: str, request: Request) -> JSONResponse:
        if not keys.notifier_key_matches(key):
            if not wrong_keys.take():
                return _error(429, "too many requests")
            return _error(404, "not found")
        payload = await _json_body(request, notifier.MAX_BODY)
        if isinstance(payload, JSONResponse):
            return payload
        try:
            delivery = notifier.parse_delivery(payload)
            # Only well-formed deliveries reach the DB and Upstox: those are what the bucket limits.
            if not deliveries.take():
                return _error(429, "too many deliveries; try again later")
            written = await notifier.accept(delivery)
        except notifier.Rejected as exc:
            log.warning("Upstox notifier delivery refused (%d): %s", exc.status, exc.message)
            return _error(exc.status, exc.message)
        return JSONResponse({"status": "success", "connections": written})

    health_source = streams.HealthSource()
    app.state.health_reporter = health_metrics.start_reporter(health_source)

    async def _streams(user: Any, only: str, offset: int, limit: int) -> tuple[Any, ...]:
        readable, _ = await _readable(user)
        tokens = await statuses(readable, probe=False)  # the renewal record: no call to Upstox
        rows, problem = await health_source.read()
        limits = streams.Thresholds.configured()
        items = streams.build(rows, tokens, lambda c: _authorized(user, c, "GET"), limits=limits)
        page, total = streams.page_of(items, offset, limit, only or None)
        return page, streams.summary(items), total, problem, limits

    @app.get("/streams", response_class=HTMLResponse)
    async def streams_view(
        request: Request, user: user_dep, only: str = "", offset: int = 0, limit: int = streams.DEFAULT_LIMIT
    ) -> HTMLResponse:
        page, counts, total, problem, limits = await _streams(user, only, offset, limit)
        html = streams_page(
            page,
            counts,
            total=total,
            offset=max(0, offset),
            limit=max(1, min(limit, streams.MAX_LIMIT)),
            only=only or None,
            base_url=f"{_app_url(request)}/streams",
            problem=problem,
            stale_after_s=limits.stale_after_s,
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/streams")
    async def api_streams(
        user: user_dep, only: str = "", offset: int = 0, limit: int = streams.DEFAULT_LIMIT
    ) -> JSONResponse:
        page, counts, total, problem, _ = await _streams(user, only, offset, limit)
        body = {
            "summary": counts,
            "total": total,
            "offset": max(0, offset),
            "streams": page,
            "problem": problem,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @app.post("/postback/{key}")
    async def postback_webhook(key: str, request: Request) -> JSONResponse:
        conn = await postback.connection_for(key)
        if conn is None:
            if not postback.wrong_keys.take():
                return _error(429, "too many requests")
            return _error(404, "not found")
        payload = await _json_body(request, postbacks.MAX_BODY)
        if isinstance(payload, JSONResponse):
            return payload
        try:
            await postback.accept(conn, payload)
        except postbacks.PostbackRejected as exc:
            log.warning("Upstox postback for %s refused (%d): %s", conn.conn_id, exc.status, exc.message)
            return _error(exc.status, exc.message)
        return JSONResponse({"status": "success"})

    return app


def _hide_code_from_access_log(request: Request) -> None:
    """Replace the authorization code in the request's query string, which Airflow's access log
    writes when the request finishes (its redaction knows no ``code`` key). Starlette hands the
    same scope dict through every middleware and mount, so the log line reads the edited one."""
    query = request.scope.get("query_string", b"")
    if b"code=" in query:
        pairs = [(k, "***" if k == "code" else v) for k, v in parse_qsl(query.decode("latin-1"), True)]
        request.scope["query_string"] = urlencode(pairs).encode()


async def _json_body(request: Request, limit: int) -> Any:
    """The decoded JSON body of a webhook delivery, or the refusal to answer: 415 (not
    ``application/json``), 413 (over *limit* bytes), 400 (not JSON)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _error(415, "send application/json")
    body = await _read_limited(request, limit)
    if body is None:
        return _error(413, f"body larger than {limit} bytes")
    try:
        return json.loads(body)
    except ValueError:
        return _error(400, "the body is not valid JSON")


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it is known to exceed *limit* (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
