"""Column types and the shared ``MetaData`` of every table of the store (see :mod:`..schema`)."""

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


def bookkeeping(version_len: int) -> list[sa.Column[Any]]:
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
