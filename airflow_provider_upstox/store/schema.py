"""Tables of the portfolio store (SQLAlchemy Core, no ORM).

Every state table is keyed by ``account`` (the Upstox user id) plus the object's natural key, so
several accounts can share one store. Each state row carries the bookkeeping the upsert rule needs:

``version``
    A fixed-width byte string computed in Python (see :mod:`.rows`) whose *bytewise* order is the
    ordering rule of ``docs/PROTOCOL.md`` §5. The upsert's condition is only
    ``new.version > stored.version``, which PostgreSQL (``bytea``), SQLite (``BLOB``) and
    MySQL/MariaDB (``VARBINARY``) all compare as raw bytes, so the rule holds inside the database,
    under concurrent writers, with no collation surprises. Orders: 43 bytes; positions: 24
    (schema version 2: trading day and day traded quantity first); holdings and GTT orders: 16.
``revision``
    How many states were accepted for the row (1 = inserted); it lets ``apply()`` count inserts
    versus updates from ``RETURNING`` (or a keyed read-back on MySQL).
``write_id``
    Random id of the batch that last wrote the row (used to count writes on MySQL, which has no
    ``RETURNING`` for upserts).

Money is ``Numeric(20, 6)``: Upstox prices have at most a few decimals and typed views cap values at
1e13. Times are timezone-aware UTC (:class:`UTCDateTime`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect

#: Bump together with a new entry in ``migrations.MIGRATIONS``.
SCHEMA_VERSION: Final = 6


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; MySQL/MariaDB (``DATETIME(6)``) and SQLite have no zone, so
    values are stored as naive UTC and given ``tzinfo=UTC`` again when read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only accepts aware datetimes")
        value = value.astimezone(dt.timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def _version_type(length: int) -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary().with_variant(mysql.VARBINARY(length), "mysql", "mariadb")


JSONType: Final = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Money: Final = sa.Numeric(20, 6, asdecimal=True)
Qty: Final = sa.BigInteger
#: Account ids and natural keys (indexed: bounded for MySQL key length limits).
Key: Final = sa.String(64)

metadata = sa.MetaData()


def _bookkeeping(version_len: int) -> list[sa.Column[Any]]:
    """Columns every state table shares (winning update's provenance + rule columns)."""
    return [
        sa.Column("raw", JSONType, nullable=False, comment="the Upstox JSON object as received"),
        sa.Column("source", sa.String(16), nullable=False, comment="stream, snapshot, history or postback"),
        sa.Column("seq", sa.BigInteger, nullable=False, comment="arrival sequence (last tie-break)"),
        sa.Column("connection_epoch", sa.Integer, nullable=False, comment="stream connection number"),
        sa.Column(
            "received_at",
            UTCDateTime,
            nullable=False,
            comment="when received; for a snapshot row when the snapshot request began",
        ),
        sa.Column("version", _version_type(version_len), nullable=False, comment="ordering key (bytes)"),
        sa.Column("revision", sa.Integer, nullable=False, comment="accepted states (1 = inserted)"),
        sa.Column("write_id", sa.BigInteger, nullable=False, comment="batch that last wrote the row"),
        sa.Column("first_seen_at", UTCDateTime, nullable=False, comment="received_at of the first state"),
        sa.Column("updated_at", UTCDateTime, nullable=False, comment="database write time of this state"),
    ]


ORDER_VERSION_LEN: Final = 43
STATE_VERSION_LEN: Final = 16  # holdings and GTT orders
POSITION_VERSION_LEN: Final = 24  # schema version 2 (was 16)

orders = sa.Table(
    "upstox_orders",
    metadata,
    sa.Column("account", Key, primary_key=True, comment="Upstox user id"),
    sa.Column("order_id", Key, primary_key=True),
    sa.Column("status", sa.String(64), nullable=False),
    sa.Column("user_id", Key),
    sa.Column("exchange", sa.String(32)),
    sa.Column("instrument_token", sa.String(128)),
    sa.Column("instrument_key", sa.String(128)),
    sa.Column("trading_symbol", sa.String(128)),
    sa.Column("product", sa.String(16)),
    sa.Column("order_type", sa.String(16)),
    sa.Column("transaction_type", sa.String(16)),
    sa.Column("validity", sa.String(16)),
    sa.Column("variety", sa.String(32)),
    sa.Column("price", Money),
    sa.Column("average_price", Money),
    sa.Column("trigger_price", Money),
    sa.Column("quantity", Qty),
    sa.Column("disclosed_quantity", Qty),
    sa.Column("pending_quantity", Qty),
    sa.Column("filled_quantity", Qty),
    sa.Column("order_ref_id", Key),
    sa.Column("exchange_order_id", Key),
    sa.Column("parent_order_id", Key),
    sa.Column("order_request_id", sa.String(32)),
    sa.Column("is_amo", sa.Boolean),
    sa.Column("tag", sa.Text, comment="free user text"),
    sa.Column("status_message", sa.Text),
    sa.Column("status_message_raw", sa.Text),
    sa.Column("exchange_timestamp", UTCDateTime, comment="India time in the payload, stored as UTC"),
    sa.Column("order_timestamp", UTCDateTime, comment="India time in the payload, stored as UTC"),
    sa.Column("guid", sa.String(128)),
    sa.Column("placed_by", Key),
    sa.Column("is_terminal", sa.Boolean, nullable=False, comment="complete/cancelled/rejected..."),
    sa.Column("event_ts", UTCDateTime, comment="exchange_timestamp, else order_timestamp"),
    sa.Column("status_rank", sa.SmallInteger, nullable=False, comment="lifecycle rank (rows.STATUS_RANK)"),
    *_bookkeeping(ORDER_VERSION_LEN),
    sa.Index("ix_upstox_orders_account_terminal", "account", "is_terminal"),
    sa.Index("ix_upstox_orders_account_instrument", "account", "instrument_token"),
    comment="Latest known state of every order (one row per account + order_id)",
)

order_events = sa.Table(
    "upstox_order_events",
    metadata,
    sa.Column("account", Key, primary_key=True),
    sa.Column("order_id", Key, primary_key=True),
    sa.Column(
        "state_id",
        sa.String(40),
        primary_key=True,
        comment="sha1 of status, filled_quantity, order_request_id, exchange/order timestamps",
    ),
    sa.Column("status", sa.String(64), nullable=False),
    sa.Column("filled_quantity", Qty),
    sa.Column("pending_quantity", Qty),
    sa.Column("average_price", Money),
    sa.Column("order_request_id", sa.String(32)),
    sa.Column("exchange_timestamp", UTCDateTime),
    sa.Column("order_timestamp", UTCDateTime),
    sa.Column("event_ts", UTCDateTime),
    sa.Column("status_message", sa.Text),
    sa.Column("raw", JSONType, nullable=False),
    sa.Column(
        "source",
        sa.String(16),
        nullable=False,
        comment="channel that delivered the state first: stream, snapshot, history or postback",
    ),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    comment="Every distinct observed state of an order; a repeated state is a no-op",
)

positions = sa.Table(
    "upstox_positions",
    metadata,
    sa.Column("account", Key, primary_key=True),
    sa.Column("instrument_token", sa.String(128), primary_key=True),
    sa.Column("product", sa.String(16), primary_key=True),
    sa.Column("instrument_key", sa.String(128)),
    sa.Column("exchange", sa.String(32)),
    sa.Column("quantity", Qty),
    sa.Column("multiplier", Money),
    sa.Column("average_price", Money),
    sa.Column("buy_price", Money),
    sa.Column("sell_price", Money),
    sa.Column("buy_value", Money),
    sa.Column("sell_value", Money),
    sa.Column("overnight_quantity", Qty),
    sa.Column("overnight_buy_amount", Money),
    sa.Column("overnight_buy_quantity", Qty),
    sa.Column("overnight_sell_amount", Money),
    sa.Column("overnight_sell_quantity", Qty),
    sa.Column("day_buy_quantity", Qty),
    sa.Column("day_buy_price", Money),
    sa.Column("day_buy_value", Money),
    sa.Column("day_sell_quantity", Qty),
    sa.Column("day_sell_price", Money),
    sa.Column("day_sell_value", Money),
    *_bookkeeping(POSITION_VERSION_LEN),
    comment="Latest full state of every position (account + instrument_token + product)",
)

holdings = sa.Table(
    "upstox_holdings",
    metadata,
    sa.Column("account", Key, primary_key=True),
    sa.Column("isin", sa.String(32), primary_key=True),
    sa.Column("instrument_token", sa.String(128)),
    sa.Column("instrument_key", sa.String(128)),
    sa.Column("exchange", sa.String(32)),
    sa.Column("company_name", sa.String(255)),
    sa.Column("product", sa.String(16)),
    sa.Column("quantity", Qty),
    sa.Column("t1_quantity", Qty),
    sa.Column("average_price", Money),
    sa.Column("haircut", Money),
    sa.Column("collateral_type", sa.String(32)),
    sa.Column("collateral_quantity", Qty),
    sa.Column("collateral_update_quantity", Qty),
    sa.Column("cnc_used_quantity", Qty),
    *_bookkeeping(STATE_VERSION_LEN),
    comment="Latest full state of every holding (account + isin)",
)

gtt_orders = sa.Table(
    "upstox_gtt_orders",
    metadata,
    sa.Column("account", Key, primary_key=True),
    sa.Column("gtt_order_id", Key, primary_key=True),
    sa.Column("type", sa.String(16)),
    sa.Column("exchange", sa.String(32)),
    sa.Column("instrument_token", sa.String(128)),
    sa.Column("quantity", Qty),
    sa.Column("product", sa.String(16)),
    sa.Column("created_at", UTCDateTime, comment="epoch microseconds in the payload, stored as UTC"),
    sa.Column("expires_at", UTCDateTime, comment="epoch microseconds in the payload, stored as UTC"),
    sa.Column("rules", JSONType, nullable=False, comment="rules[] as sent (ENTRY/TARGET/STOPLOSS)"),
    *_bookkeeping(STATE_VERSION_LEN),
    comment="Latest full state of every GTT order (account + gtt_order_id)",
)

rejected_updates = sa.Table(
    "upstox_rejected_updates",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("account", Key),
    sa.Column("update_type", sa.String(64)),
    sa.Column("natural_key", sa.String(255)),
    sa.Column("error", sa.Text, nullable=False, comment="why the update could not be stored"),
    sa.Column("data", JSONType, comment="the update's data as received"),
    sa.Column("source", sa.String(16)),
    sa.Column("seq", sa.BigInteger),
    sa.Column("received_at", UTCDateTime),
    sa.Column("rejected_at", UTCDateTime, nullable=False),
    sa.Index("ix_upstox_rejected_updates_rejected_at", "rejected_at"),
    comment="Updates that failed validation; the rest of their batch was applied",
)

store_meta = sa.Table(
    "upstox_store_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    comment="Store bookkeeping, e.g. schema_version",
)

stream_progress = sa.Table(
    "upstox_stream_progress",
    metadata,
    sa.Column("account", Key, primary_key=True),
    sa.Column("stream_key", sa.String(191), primary_key=True, comment="connection / consumer name"),
    sa.Column("last_seq", sa.BigInteger, comment="highest seq applied"),
    sa.Column("last_received_at", UTCDateTime, comment="latest received_at applied"),
    sa.Column("batches", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("updates", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("state", JSONType, comment="free-form watermark/progress of an operator"),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    comment="Per account and stream/consumer: last update received, counters, watermarks",
)

STATE_TABLES: Final = {"order": orders, "position": positions, "holding": holdings, "gtt_order": gtt_orders}
KEY_COLUMNS: Final = {
    "order": ("account", "order_id"),
    "position": ("account", "instrument_token", "product"),
    "holding": ("account", "isin"),
    "gtt_order": ("account", "gtt_order_id"),
}

# ---------------------------------------------------------------- reconciliation log (schema version 4)
# Written by PortfolioStore.start_reconciliation_run / finish_reconciliation_run (store/run_log.py).
# Until schema version 4 the reconciliation operator created these two tables itself with
# ``create_all``: names, columns and types are kept so that such databases go on working as they are.

reconciliation_runs = sa.Table(
    "upstox_reconciliation_runs",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", Key, nullable=False, comment="Upstox user id"),
    sa.Column("upstox_conn_id", sa.String(250), nullable=True),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("dag_run_id", sa.String(250), nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("update_types", sa.String(100), nullable=False, comment="comma-separated"),
    sa.Column("compared", sa.Integer, nullable=False, default=0, comment="keys compared"),
    sa.Column("discrepancies", sa.Integer, nullable=False, default=0),
    sa.Column("repaired", sa.Integer, nullable=False, default=0),
    sa.Column(
        "status", sa.String(20), nullable=False, comment="running, clean, discrepancies, repaired, error"
    ),
    comment="One row per reconciliation run of the Upstox portfolio store against REST snapshots.",
)

reconciliation_discrepancies = sa.Table(
    "upstox_reconciliation_discrepancies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("upstox_reconciliation_runs.run_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("account", Key, nullable=False),
    sa.Column("update_type", sa.String(32), nullable=False),
    sa.Column("natural_key", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False, comment="missing, extra, field_mismatch"),
    sa.Column("field", sa.String(64), nullable=True),
    sa.Column("db_value", sa.Text, nullable=True, comment="JSON"),
    sa.Column("snapshot_value", sa.Text, nullable=True, comment="JSON"),
    sa.Column("repaired", sa.Boolean, nullable=False, default=False),
    comment="Each difference a reconciliation run found between the store and the REST snapshot.",
)

RECONCILIATION_TABLES: Final = (reconciliation_runs, reconciliation_discrepancies)


# ------------------------------------------------------------ fills and history backfill (schema version 5)

trades = sa.Table(
    "upstox_trades",
    metadata,
    sa.Column("account", Key, primary_key=True, comment="Upstox user id"),
    sa.Column("trade_id", Key, primary_key=True, comment="exchange trade id: one row per fill"),
    sa.Column("order_id", Key, nullable=False, comment="the order this fill belongs to"),
    sa.Column("exchange_order_id", Key),
    sa.Column("exchange", sa.String(32)),
    sa.Column("product", sa.String(16)),
    sa.Column("trading_symbol", sa.String(128)),
    sa.Column("instrument_token", sa.String(128)),
    sa.Column("order_type", sa.String(16)),
    sa.Column("transaction_type", sa.String(16)),
    sa.Column("quantity", Qty, nullable=False),
    sa.Column("average_price", Money, comment="price of this fill"),
    sa.Column("order_ref_id", Key),
    sa.Column("exchange_timestamp", UTCDateTime, comment="India time in the payload, stored as UTC"),
    sa.Column("order_timestamp", UTCDateTime, comment="India time in the payload, stored as UTC"),
    sa.Column("raw", JSONType, nullable=False, comment="the Upstox JSON object as received"),
    sa.Column("source", sa.String(16), nullable=False, comment="trade_book (day) or order_trades (backfill)"),
    sa.Column("received_at", UTCDateTime, nullable=False, comment="when the request that read it began"),
    sa.Index("ix_upstox_trades_account_order", "account", "order_id"),
    comment="Every fill once (account + trade_id), linked to its order; never updated",
)

backfill_queue = sa.Table(
    "upstox_backfill_queue",
    metadata,
    sa.Column("account", Key, primary_key=True),
    sa.Column("order_id", Key, primary_key=True),
    sa.Column("reason", sa.String(32), nullable=False, comment="changed (snapshot differs) or unseen"),
    sa.Column("queued_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.String(255)),
    sa.Column("done_at", UTCDateTime, comment="NULL while the order's history is still to be read"),
    sa.Column("states_added", sa.Integer, comment="history states the store was missing"),
    sa.Column("trades_added", sa.Integer, comment="fills the store was missing"),
    sa.Index("ix_upstox_backfill_queue_pending", "account", "done_at"),
    comment="Orders whose history the backfill must read: survives drops and restarts (resumable)",
)

HISTORY_TABLES: Final = (trades, backfill_queue)


# ---------------------------------------------------------------- stream health (schema version 6)
# Written by the stream operators after each persisted event (store/health.py), read by the plugin's
# Streams page and metrics. One row per upstox connection: the triggerer and the API server share
# nothing else. It holds no token and no URL, only states, times, counters and an error kind.

stream_health = sa.Table(
    "upstox_stream_health",
    metadata,
    sa.Column("conn_id", sa.String(191), primary_key=True, comment="the upstox connection id"),
    sa.Column("account", Key, comment="Upstox user id, when known"),
    sa.Column("consumer", sa.String(16), nullable=False, comment="task (deferral) or watcher (assets)"),
    sa.Column("state", sa.String(16), nullable=False, comment="connected, idle, token_wait or error"),
    sa.Column("state_since", UTCDateTime, nullable=False, comment="observed_at of the state's first event"),
    sa.Column("observed_at", UTCDateTime, nullable=False, comment="time of the event (newest wins)"),
    sa.Column("last_event_at", UTCDateTime, nullable=False, comment="when the newest event was persisted"),
    sa.Column("last_message_at", UTCDateTime, comment="newest live stream message received"),
    sa.Column("connection_epoch", sa.Integer, comment="connection number of the stream client"),
    sa.Column("reconnects", sa.BigInteger, comment="reconnects of the stream client"),
    sa.Column("messages", sa.BigInteger, comment="messages of the stream client"),
    sa.Column("lag_ms", sa.Float, comment="wait of the oldest live update of the newest batch"),
    sa.Column("pending", sa.Integer, comment="updates buffered in the stream client"),
    sa.Column("error_kind", sa.String(32), comment="kind of the last error (never its text)"),
    sa.Column("error_at", UTCDateTime),
    sa.Column("token_refused_since", UTCDateTime, comment="while the stream waits for a new token"),
    comment="Per upstox connection: the state of its portfolio stream, for operators of many accounts",
)

HEALTH_TABLES: Final = (stream_health,)
