"""The ``upstox`` connections as the token plugin sees them, and the one place a new token is written.

Runs in the API server, which has the metadata DB: connections are read and written with Airflow's
``Connection`` model (the password and extra are encrypted by it when a Fernet key is set). A
connection defined by an environment variable or a secrets backend cannot be written from here: it
is listed as read-only, with the reason, and a write to it is refused (:class:`NotWritable`).

Each connection's extra carries a ``renewal`` record (key :data:`RENEWAL_EXTRA_KEY`, nested so no
key name trips Airflow's sensitive-field masking): ``fingerprint`` of the token it describes,
``issued_at``/``expires_at`` (epoch ms), ``user_id``, ``source`` (``oauth``/``notifier``),
``refused_since`` (epoch ms, set when a probe sees Upstox refuse the token) and ``oauth_state_at``
(issue time of the last OAuth ``state`` spent: older states are replays). A record whose fingerprint
is not the current token's describes an older token (someone pasted a new one) and is ignored.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_upstox.client.login import next_daily_expiry
from airflow_provider_upstox.hooks.upstox import RENEWAL_EXTRA_KEY, token_fingerprint

CONN_TYPE = "upstox"


class NotWritable(Exception):  # a reason, shown to the user as is
    """The connection cannot be written from the API server (why is the message)."""


class StaleToken(Exception):
    """The delivered token is not newer than the connection's."""


@dataclass(frozen=True)
class UpstoxConnection:
    """One ``upstox`` connection: what the page shows and the checks need. ``repr`` hides the token."""

    conn_id: str
    token: str = field(repr=False)
    host: str | None
    port: int | None
    extra: dict[str, Any] = field(repr=False)
    read_only_reason: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return token_fingerprint(self.token)

    @property
    def record(self) -> dict[str, Any]:
        """The renewal record if it describes the current token, else ``{}``."""
        record = self.extra.get(RENEWAL_EXTRA_KEY)
        if isinstance(record, dict) and record.get("fingerprint") == self.fingerprint:
            return record
        return {}

    @property
    def client_id(self) -> str:
        return str(self.extra.get("client_id") or "").strip()

    @property
    def expected_user(self) -> str:
        return str(self.extra.get("user_id") or "").strip()

    def issued_at(self) -> int:
        value = self.record.get("issued_at")
        return int(value) if isinstance(value, int) else 0


def _shadowing_backend(conn_id: str) -> str | None:
    """Name of a secrets source read before the metadata DB that defines *conn_id*, if any."""
    if os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}"):
        return "an environment variable"
    from airflow.configuration import ensure_secrets_loaded
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend
    from airflow.secrets.metastore import MetastoreBackend

    for backend in ensure_secrets_loaded():
        if isinstance(backend, MetastoreBackend):
            return None
        if isinstance(backend, EnvironmentVariablesBackend):
            continue
        try:
            found = backend.get_connection(conn_id)
        except Exception:  # a failing backend must not hide the page
            found = None
        if found is not None:
            return f"the secrets backend {type(backend).__name__}"
    return None


def list_connections() -> list[UpstoxConnection]:
    """Every ``upstox`` connection: the metadata DB's, then environment-only ones (read-only)."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: list[UpstoxConnection] = []
    with create_session() as session:
        rows = session.scalars(select(Connection).where(Connection.conn_type == CONN_TYPE)).all()
        for row in rows:
            shadow = _shadowing_backend(row.conn_id)
            reason = f"defined by {shadow}, which Airflow reads first: update it there" if shadow else None
            found.append(_from_model(row, reason))
    known = {c.conn_id for c in found}
    found.extend(c for c in _environment_connections() if c.conn_id not in known)
    return sorted(found, key=lambda c: c.conn_id)


def _environment_connections() -> list[UpstoxConnection]:
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    backend = EnvironmentVariablesBackend()
    out = []
    for name in os.environ:
        if not name.startswith("AIRFLOW_CONN_"):
            continue
        conn_id = name[len("AIRFLOW_CONN_") :].lower()
        try:
            conn = backend.get_connection(conn_id)
        except Exception:
            continue
        if conn is not None and conn.conn_type == CONN_TYPE:
            out.append(_from_model(conn, "defined by an environment variable: update the variable"))
    return out


def _from_model(conn: Any, read_only_reason: str | None) -> UpstoxConnection:
    try:
        extra = conn.extra_dejson
    except Exception:
        extra = {}
    return UpstoxConnection(
        conn_id=conn.conn_id,
        token=conn.password or "",
        host=conn.host,
        port=conn.port,
        extra=extra if isinstance(extra, dict) else {},
        read_only_reason=read_only_reason,
    )


def get_connection(conn_id: str) -> UpstoxConnection | None:
    return next((c for c in list_connections() if c.conn_id == conn_id), None)


def write_token(
    conn_id: str,
    token: str,
    *,
    user_id: str,
    issued_at: int,
    expires_at: int | None,
    source: str,
    expected_fingerprint: str | None = None,
) -> None:
    """Put *token* into the connection with its renewal record, in one transaction.

    :param expected_fingerprint: the token the caller checked against; if the connection changed
        since (another delivery won), nothing is written and :class:`StaleToken` is raised.
    :raises NotWritable: not a metadata DB connection, or shadowed by another source.
    :raises StaleToken: the connection already holds a token at least as new.
    """
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    shadow = _shadowing_backend(conn_id)
    if shadow:
        raise NotWritable(f"connection {conn_id!r} is defined by {shadow}: update it there")
    with create_session() as session:
        row = session.scalar(select(Connection).where(Connection.conn_id == conn_id).with_for_update())
        if row is None or row.conn_type != CONN_TYPE:
            raise NotWritable(f"connection {conn_id!r} is not an upstox connection of the metadata DB")
        current = _from_model(row, None)
        if expected_fingerprint is not None and current.fingerprint != expected_fingerprint:
            raise StaleToken("the connection's token changed while the new one was being checked")
        if issued_at <= current.issued_at():
            raise StaleToken("the connection already holds a token issued at or after this one")
        previous = current.extra.get(RENEWAL_EXTRA_KEY)
        spent = previous.get("oauth_state_at", 0) if isinstance(previous, dict) else 0
        record = {
            "fingerprint": token_fingerprint(token),
            "issued_at": issued_at,
            "expires_at": expires_at or next_daily_expiry(issued_at),
            "user_id": user_id,
            "source": source,
            "oauth_state_at": spent,
        }
        row.password = token
        row.set_extra(json.dumps({**current.extra, RENEWAL_EXTRA_KEY: record}))


def spend_oauth_state(conn_id: str, state_at: int) -> None:
    """Mark an OAuth state spent before its code is exchanged: a replay (even concurrent) fails here.

    :raises StaleToken: a state issued at or before *state_at* was already spent.
    """
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalar(select(Connection).where(Connection.conn_id == conn_id).with_for_update())
        if row is None:
            raise NotWritable(f"connection {conn_id!r} is not in the metadata DB")
        extra = _from_model(row, None).extra
        record = extra.get(RENEWAL_EXTRA_KEY)
        record = dict(record) if isinstance(record, dict) else {}
        if state_at <= int(record.get("oauth_state_at") or 0):
            raise StaleToken("this login link was already used")
        record["oauth_state_at"] = state_at
        row.set_extra(json.dumps({**extra, RENEWAL_EXTRA_KEY: record}))


def record_refusal(conn_id: str, fingerprint: str, since_ms: int | None = None) -> int:
    """Note that Upstox refuses the token *fingerprint* (first time only); returns ``refused_since``."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    now = since_ms or int(time.time() * 1000)
    with create_session() as session:
        row = session.scalar(select(Connection).where(Connection.conn_id == conn_id).with_for_update())
        if row is None:
            return now
        current = _from_model(row, None)
        if current.fingerprint != fingerprint:
            return now
        record = dict(current.record) or {"fingerprint": fingerprint}
        if record.get("refused_since"):
            return int(record["refused_since"])
        record["refused_since"] = now
        row.set_extra(json.dumps({**current.extra, RENEWAL_EXTRA_KEY: record}))
        return now
