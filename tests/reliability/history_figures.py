"""History figures of a fault row: what the store holds of every order's path and every fill.

- ``lost intermediate states``: states in the simulator's history of an order (``/_sim/state``,
  ``orders[id].history``) with no ``upstox_order_events`` row: never stored by any channel.
- ``fills missing``: fills of the simulator's day (``trades``) with no ``upstox_trades`` row.
- ``only by history`` / ``only by postback``: event rows first recorded by the history backfill or
  by a postback, whose state neither the stream nor a snapshot delivered to the operator.

:class:`PostbackReceiver` plays the provider's postback endpoint without Airflow: an HTTP server on
loopback whose handler runs the same parts as the plugin route (strict parsing, the durable spool)
and a drain thread moving the spool into the store (the plugin endpoint itself is tested in a real
API server: ``tests/plugins/test_postback_endpoint.py``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airflow_provider_upstox.models.updates import Update, now_us
from airflow_provider_upstox.postbacks import MAX_BODY, PostbackRejected, PostbackSpool, drain, parse_postback
from airflow_provider_upstox.store import PortfolioStore, history


def _state_id(data: dict[str, Any], account: str) -> str | None:
    update = Update(update_type="order", data=data, seq=1, received_at_us=now_us(), account=account)
    return history.state_id_of(update, account, datetime.now(timezone.utc))


def truth_ids(state: dict[str, Any]) -> tuple[set[tuple[str, str]], set[str]]:
    """Every (order id, state id) of the simulator's histories, and every trade id of its day."""
    account = state["user_id"]
    states = {
        (oid, sid)
        for oid, order in state["orders"].items()
        for step in order["history"]
        if (sid := _state_id(step, account)) is not None
    }
    return states, {str(t["trade_id"]) for t in state["trades"]}


def stored(
    store_url: str, account: str
) -> tuple[dict[tuple[str, str], tuple[str, dict[str, Any]]], set[str]]:
    """Event rows ((order id, state id) -> (source, raw)) and trade ids of *account* in the store."""
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    try:
        md = sa.MetaData()
        with engine.connect() as conn:
            try:
                events = sa.Table("upstox_order_events", md, autoload_with=conn)
                trades = sa.Table("upstox_trades", md, autoload_with=conn)
            except sa.exc.NoSuchTableError:
                return {}, set()
            query = sa.select(events.c.order_id, events.c.state_id, events.c.source, events.c.raw)
            rows = conn.execute(query.where(events.c.account == account))
            found = {
                (r.order_id, r.state_id): (r.source, r.raw if isinstance(r.raw, dict) else json.loads(r.raw))
                for r in rows
            }
            fills = set(
                conn.execute(sa.select(trades.c.trade_id).where(trades.c.account == account)).scalars()
            )
    finally:
        engine.dispose()
    return found, fills


def gaps(store_url: str, state: dict[str, Any]) -> tuple[int, int]:
    """(lost intermediate states, fills missing) of the store against the ground truth."""
    truth_states, truth_fills = truth_ids(state)
    events, fills = stored(store_url, state["user_id"])
    return len(truth_states - set(events)), len(truth_fills - fills)


def only_by(
    store_url: str, state: dict[str, Any], seen: set[tuple[str, tuple[str, ...]]], signature: Any
) -> tuple[int, int]:
    """(states only by history, states only by postback): first recorded by that channel and never
    delivered by the stream or a snapshot (*seen*: (order id, signature fields) the operator got)."""
    events, _ = stored(store_url, state["user_id"])
    counts = {"history": 0, "postback": 0}
    for (order_id, _sid), (source, raw) in events.items():
        sig = signature("order", raw)
        if source in counts and (sig is None or (order_id, sig[1]) not in seen):
            counts[source] += 1
    return counts["history"], counts["postback"]


class PostbackReceiver:
    """The postback endpoint's Airflow-free parts behind a loopback HTTP server (see the module docstring)."""

    def __init__(self, store_url: str, account: str, spool_path: Path) -> None:
        self.store = PortfolioStore.from_url(store_url, poolclass=sa.pool.NullPool)
        self.account = account
        self.spool = PostbackSpool(spool_path)
        self.accepted = self.refused = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status = 200
                if length > MAX_BODY or self.headers.get("Content-Type") != "application/json":
                    status = 413 if length > MAX_BODY else 415
                else:
                    try:
                        update = parse_postback(json.loads(self.rfile.read(length)), receiver.account)
                        receiver.spool.put("store", receiver.account, update)
                        receiver.accepted += 1
                        receiver._wake.set()
                    except (ValueError, PostbackRejected):
                        status = 422
                if status != 200:
                    receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/upstox/postback/key"

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                while drain(self.spool, lambda _conn_id: self.store):
                    pass
            except sa.exc.SQLAlchemyError:
                self._stop.wait(0.5)  # the database is down: the spool keeps them

    @contextmanager
    def running(self) -> Iterator[PostbackReceiver]:
        threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._drain_loop, daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            self.server.shutdown()
            self.server.server_close()
            for t in threads:
                t.join(10)
            self.store.engine.dispose()
