"""Order and GTT postbacks (``docs/PROTOCOL.md`` §7): strict validation, a durable local spool, and
the drain into the store.

Upstox POSTs every order update (and GTT update, if the app enables it) to the app's webhook URL,
with the stream's JSON, unsigned, one attempt, no documented retry. A postback is therefore one
more at-least-once input to the idempotent store, marked ``source="postback"``: whichever channel
(stream, postback, snapshot, history) delivers a state first records its event row, and the others
find it there.

Three parts, none of which imports Airflow (the plugin endpoint, ``plugins/postback.py``, wires
them to HTTP):

- :func:`parse_postback` checks a decoded body strictly: a JSON object of a postback kind
  (``order``, ``gtt_order``), of the account the endpoint serves, that the store would accept
  (the store's own validation runs here, before anything is kept), and turns it into an
  :class:`~.models.updates.Update`.
- :class:`PostbackSpool` keeps accepted postbacks in a local SQLite file (WAL, ``synchronous=FULL``:
  on disk before the endpoint answers), so the answer is fast and a database that is down, slow or
  being migrated loses nothing; the file survives a restart of the API server.
- :func:`drain` moves spooled postbacks into the store in batches, deleting them only after the
  store committed (a crash in between replays them: harmless, the store is idempotent).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import (
    GTT_ORDER,
    ORDER,
    POSTBACK,
    Update,
    next_seq,
    now_us,
    strip_deprecated,
)
from airflow_provider_upstox.store import rows

if TYPE_CHECKING:
    from airflow_provider_upstox.store import PortfolioStore

log = logging.getLogger(__name__)

#: Largest postback body accepted (an order message is about 1 KiB; a GTT one with rules 2 KiB).
MAX_BODY: Final = 16 * 1024
POSTBACK_TYPES: Final = frozenset({ORDER, GTT_ORDER})
#: Most postbacks waiting in one spool before the endpoint answers 503 (a database down for hours).
MAX_SPOOLED: Final = 200_000


class PostbackRejected(ValueError):
    """A postback refused, with the HTTP status to answer and a message safe to show and log."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_postback(payload: Any, account: str, *, received_us: int | None = None) -> Update:
    """The :class:`Update` of one decoded postback body for *account*, or :class:`PostbackRejected`.

    - a JSON object whose ``update_type`` is ``order`` or ``gtt_order`` (an order body without
      ``update_type``, as Upstox's older sample, counts as an order);
    - its ``user_id`` (or the deprecated ``userId``), when present, must be *account*; an order must
      carry one (GTT bodies do not);
    - everything the store checks (types, ranges, lengths, timestamps, text) must pass.

    :raises PostbackRejected: 422 with the first problem.
    """
    if not isinstance(payload, dict):
        raise PostbackRejected(422, "a postback is a JSON object")
    update_type = payload.get("update_type")
    if update_type is None and "order_id" in payload and "gtt_order_id" not in payload:
        update_type = ORDER
    if update_type not in POSTBACK_TYPES:
        raise PostbackRejected(422, "update_type must be 'order' or 'gtt_order'")
    users = {payload[k] for k in ("user_id", "userId") if payload.get(k) is not None}
    if users and users != {account}:
        raise PostbackRejected(422, "the postback belongs to another user")
    if update_type == ORDER and not users:
        raise PostbackRejected(422, "an order postback must carry user_id")
    update = Update(
        update_type=update_type,
        data=strip_deprecated(payload),
        source=POSTBACK,
        seq=next_seq(),
        received_at_us=now_us() if received_us is None else received_us,
        account=account,
    )
    try:
        rows.prepare(update, account, datetime.now(timezone.utc), 1)
    except InvalidUpdateError as exc:
        raise PostbackRejected(422, f"invalid {update_type}: {exc}") from None
    return update


@dataclass(frozen=True)
class Spooled:
    """One spooled postback."""

    id: int
    sql_conn_id: str
    account: str
    update: Update


class PostbackSpool:
    """A durable local queue of accepted postbacks (one SQLite file, safe across processes).

    :param path: the file (created with its directory). Every API server worker of one host may
        share it: SQLite serialises the writers, and a postback drained twice is harmless.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS postbacks (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "sql_conn_id TEXT NOT NULL, account TEXT NOT NULL, body BLOB NOT NULL, "
                "attempts INTEGER NOT NULL DEFAULT 0)"
            )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # durable before the endpoint answers
            self._local.conn = conn
        return conn

    def put(self, sql_conn_id: str, account: str, update: Update) -> None:
        """Keep *update* until the store has it (on disk when this returns).

        :raises PostbackRejected: 503 when the spool is full (the database has been down too long).
        """
        conn = self._conn()
        if self.count() >= MAX_SPOOLED:
            raise PostbackRejected(503, "the postback spool is full; the store is unreachable")
        conn.execute(
            "INSERT INTO postbacks (sql_conn_id, account, body) VALUES (?, ?, ?)",
            (sql_conn_id, account, msgspec.json.encode(update)),
        )

    def take(self, limit: int = 500) -> list[Spooled]:
        """The oldest *limit* spooled postbacks (they stay until :meth:`done`)."""
        rows_ = self._conn().execute(
            "SELECT id, sql_conn_id, account, body FROM postbacks ORDER BY id LIMIT ?", (limit,)
        )
        return [Spooled(i, c, a, msgspec.json.decode(b, type=Update)) for i, c, a, b in rows_]

    def done(self, ids: list[int]) -> None:
        conn = self._conn()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            conn.execute(f"DELETE FROM postbacks WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM postbacks").fetchone()[0])


def drain(spool: PostbackSpool, open_store: Callable[[str], PortfolioStore], limit: int = 500) -> int:
    """Apply the spooled postbacks, store by store, and forget those committed.

    :returns: how many were committed.
    :raises Exception: whatever the store raised (database down...): the postbacks stay spooled.
    """
    taken = spool.take(limit)
    groups: dict[tuple[str, str], list[Spooled]] = {}
    for item in taken:
        groups.setdefault((item.sql_conn_id, item.account), []).append(item)
    committed = 0
    for (sql_conn_id, account), items in groups.items():
        open_store(sql_conn_id).apply([i.update for i in items], account=account, stream_key="postback")
        spool.done([i.id for i in items])
        committed += len(items)
    return committed
