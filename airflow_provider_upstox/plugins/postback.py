"""The postback webhook: Upstox POSTs each order (and GTT) update here as well (``docs/PROTOCOL.md`` §7).

Upstox signs nothing and the endpoint takes unauthenticated POSTs, so it defends itself as the
notifier endpoint does, each check cheaper than the next, and keeps nothing until every one passed:

1. an unguessable key in the path, one per ``upstox`` connection (HMAC of the plugin key and the
   connection id, 192 bits, compared in constant time): the key names the connection, hence the
   account and the store; a wrong key is a 404, throttled by its own bucket;
2. ``Content-Type: application/json`` (415), at most :data:`~airflow_provider_upstox.postbacks.MAX_BODY`
   bytes (413), valid JSON (400);
3. the connection names its account (extra ``user_id``; 409 otherwise) and the payload is a valid
   order/GTT update of that user, as the store would accept it (422,
   :func:`~airflow_provider_upstox.postbacks.parse_postback`);
4. a rate limit per connection on well-formed postbacks (429);

then the update is written to the local spool (on disk, a millisecond or two) and the answer is
200. A drain task moves spooled postbacks into the store of the connection (extra
``postback_sql_conn_id``, else ``[upstox] postback_sql_conn_id``, else ``upstox_db``), retrying
with backoff while the database is down: a postback acknowledged is never lost, and one applied
twice changes nothing.

The connections are read from the metadata database at most every :data:`CONNECTIONS_TTL` seconds;
if that database is unreachable the last list read is used, so postbacks keep being spooled.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from typing import Any, Final

from airflow_provider_upstox import postbacks
from airflow_provider_upstox.plugins import connections as conns
from airflow_provider_upstox.plugins import keys
from airflow_provider_upstox.plugins.notifier import TokenBucket

log = logging.getLogger(__name__)

CONNECTIONS_TTL: Final = 30.0
#: Postbacks of one connection accepted at once, and per second after: an account placing a basket
#: of dozens of orders sends a few hundred updates in a burst. A postback refused here is not lost
#: for good: the stream carries the same update, and the history backfill reads it later.
POSTBACK_BURST: Final = 300
POSTBACK_RATE: Final = 10.0
DEFAULT_SQL_CONN_ID: Final = "upstox_db"
_MAX_BACKOFF: Final = 30.0


def postback_key(conn_id: str, key: bytes | None = None) -> str:
    """The path key of *conn_id*'s postback URL."""
    mac = hmac.new(key or keys.plugin_key(), b"postback|" + conn_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode()[:32]


def _conf(name: str, default: str) -> str:
    from airflow.configuration import conf

    return str(conf.get("upstox", name, fallback="") or default)


def spool_path() -> str:
    """``[upstox] postback_spool``, else ``$AIRFLOW_HOME/upstox_postbacks.sqlite``."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return _conf("postback_spool", os.path.join(home, "upstox_postbacks.sqlite"))


class PostbackEndpoint:
    """State of the endpoint in one API server worker: buckets, connection cache, spool, drainer."""

    def __init__(self, spool: postbacks.PostbackSpool | None = None) -> None:
        self._spool = spool
        self.wrong_keys = TokenBucket(capacity=20, rate=1.0)
        self._buckets: dict[str, TokenBucket] = {}
        self._connections: list[conns.UpstoxConnection] = []
        self._read_at = 0.0
        self._wakeup: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None

    @property
    def spool(self) -> postbacks.PostbackSpool:
        if self._spool is None:
            self._spool = postbacks.PostbackSpool(spool_path())
        return self._spool

    async def connection_for(self, key: str) -> conns.UpstoxConnection | None:
        """The connection whose postback key is *key* (``None``: no such key)."""
        if time.monotonic() - self._read_at > CONNECTIONS_TTL or not self._connections:
            try:
                self._connections = await asyncio.to_thread(conns.list_connections)
                self._read_at = time.monotonic()
            except Exception as exc:  # the metadata DB is down: keep serving the last list
                log.warning("Upstox postbacks: cannot read the connections (%s)", type(exc).__name__)
        plugin_key = keys.plugin_key()
        found = None
        for conn in self._connections:  # every key compared: the time does not tell which matched
            if hmac.compare_digest(key.encode(), postback_key(conn.conn_id, plugin_key).encode()):
                found = conn
        return found

    def allow(self, conn_id: str) -> bool:
        """The rate limit of well-formed postbacks of one connection."""
        bucket = self._buckets.setdefault(conn_id, TokenBucket(capacity=POSTBACK_BURST, rate=POSTBACK_RATE))
        return bucket.take()

    async def accept(self, conn: conns.UpstoxConnection, payload: Any) -> None:
        """Check *payload* for *conn* and spool it.

        :raises postbacks.PostbackRejected: the status and message to answer.
        """
        account = conn.expected_user
        if not account:
            raise postbacks.PostbackRejected(
                409, "set user_id in the connection's extra to receive postbacks"
            )
        update = postbacks.parse_postback(payload, account)
        if not self.allow(conn.conn_id):
            raise postbacks.PostbackRejected(429, "too many postbacks; try again later")
        sql_conn_id = str(
            conn.extra.get("postback_sql_conn_id") or _conf("postback_sql_conn_id", DEFAULT_SQL_CONN_ID)
        )
        await asyncio.to_thread(self.spool.put, sql_conn_id, account, update)
        self._wake()

    # ---------------------------------------------------------------- drain
    async def resume(self) -> None:
        """Drain what an earlier run of the API server left spooled (it stopped while the store was
        down); called when the server starts, not only at the next postback, which may be hours away."""
        if await asyncio.to_thread(self._has_spooled):
            self._wake()

    def _has_spooled(self) -> bool:
        """Anything in the spool? Without creating a spool file where none exists yet."""
        if self._spool is None and not os.path.exists(spool_path()):
            return False
        return bool(self.spool.count())

    async def aclose(self) -> None:
        """Stop the drainer (the API server shuts down): what is left stays spooled on disk."""
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)

    def _wake(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain_loop())

    def _drain_batch(self) -> int:
        """One :func:`postbacks.drain` batch, each store opened for it (a connection edited in the
        UI takes effect at the next batch; engines are not kept between batches)."""
        from airflow_provider_upstox.hooks.store import get_portfolio_store

        opened: list[Any] = []

        def open_store(sql_conn_id: str) -> Any:
            store = get_portfolio_store(sql_conn_id)
            opened.append(store)
            store.migrate()
            return store

        try:
            return postbacks.drain(self.spool, open_store)
        finally:
            for store in opened:
                store.engine.dispose()

    async def _drain_loop(self) -> None:
        assert self._wakeup is not None
        backoff = 0.5
        while True:
            self._wakeup.clear()
            try:
                moved = await asyncio.to_thread(self._drain_batch)
            except Exception as exc:  # the store is down: keep the spool, retry later
                log.warning(
                    "Upstox postbacks: the store refused a batch (%s); retrying in %.1fs",
                    type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.5
            if moved:
                continue  # maybe more
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=5.0)
            except asyncio.TimeoutError:
                if not await asyncio.to_thread(self.spool.count):
                    return  # idle: the next postback starts a new drainer
