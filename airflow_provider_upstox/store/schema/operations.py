"""The operations tables: the reconciliation log (schema version 4), fills and the history backfill
queue (5), stream health (6). Shapes only; the modules that write them are named per table."""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from airflow_provider_upstox.store.schema.columns import JSONType, Key, Money, Qty, UTCDateTime, metadata

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
