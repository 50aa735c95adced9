"""Tables of the portfolio store (SQLAlchemy Core, no ORM): the one owner of every table's shape.

:mod:`.columns` (column types, the shared ``MetaData``), :mod:`.portfolio` (state tables, order
events, rejected updates, bookkeeping, progress), :mod:`.operations` (reconciliation log, fills,
history backfill queue, stream health); every name is importable from here.

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

from airflow_provider_upstox.store.schema.columns import (
    SCHEMA_VERSION,
    JSONType,
    Key,
    Money,
    Qty,
    UTCDateTime,
    metadata,
)
from airflow_provider_upstox.store.schema.operations import (
    HEALTH_TABLES,
    HISTORY_TABLES,
    RECONCILIATION_TABLES,
    backfill_queue,
    reconciliation_discrepancies,
    reconciliation_runs,
    stream_health,
    trades,
)
from airflow_provider_upstox.store.schema.portfolio import (
    KEY_COLUMNS,
    ORDER_VERSION_LEN,
    POSITION_VERSION_LEN,
    STATE_TABLES,
    STATE_VERSION_LEN,
    gtt_orders,
    holdings,
    order_events,
    orders,
    positions,
    rejected_updates,
    store_meta,
    stream_progress,
)

__all__ = [
    "HEALTH_TABLES",
    "HISTORY_TABLES",
    "KEY_COLUMNS",
    "ORDER_VERSION_LEN",
    "POSITION_VERSION_LEN",
    "RECONCILIATION_TABLES",
    "SCHEMA_VERSION",
    "STATE_TABLES",
    "STATE_VERSION_LEN",
    "JSONType",
    "Key",
    "Money",
    "Qty",
    "UTCDateTime",
    "backfill_queue",
    "gtt_orders",
    "holdings",
    "metadata",
    "order_events",
    "orders",
    "positions",
    "reconciliation_discrepancies",
    "reconciliation_runs",
    "rejected_updates",
    "store_meta",
    "stream_health",
    "stream_progress",
    "trades",
]
