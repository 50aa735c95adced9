"""The portfolio tables: state tables (orders, positions, holdings, GTT orders), order events,
rejected updates, store bookkeeping and stream progress (see :mod:`..schema` for the bookkeeping
columns' meaning)."""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from airflow_provider_upstox.store.schema.columns import (
    JSONType,
    Key,
    Money,
    Qty,
    UTCDateTime,
    bookkeeping,
    metadata,
)

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
    *bookkeeping(ORDER_VERSION_LEN),
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
    *bookkeeping(POSITION_VERSION_LEN),
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
    *bookkeeping(STATE_VERSION_LEN),
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
    *bookkeeping(STATE_VERSION_LEN),
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
