"""Secret-leak scanner: find the access token or a stream code in anything a run wrote.

Secrets are searched as bytes in their raw form and in the spellings they take when written
elsewhere (URL-quoted, JSON-escaped, base64), in:

* files (logs, SQLite databases byte for byte, any other artefact) under a directory;
* every row of every table of a SQLAlchemy database (the Airflow metadata DB: ``trigger.kwargs``,
  ``task_instance.next_kwargs``, ``xcom``, ``asset_event.extra``, ``log``...; the portfolio DB);
* free texts (captured stdout/stderr, exception texts, trigger event payloads).

A :class:`Hit` names where and which secret (by label), never the secret value itself, so a
failing assertion does not leak it either. ``tests/reliability/test_leaks.py`` plants a value in
each kind of place first, to prove the scanner would see it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import sqlalchemy as sa

from airflow_provider_upstox.models.events import (
    GROUP_STATUS,
    PACKED_MEMBERS,
    InvalidEventError,
    group_members,
)

MIN_SECRET_LENGTH = 8  # shorter values would match by chance


@dataclass(frozen=True)
class Secret:
    label: str  #: e.g. "token" or "code #3": shown in reports instead of the value
    value: str


@dataclass(frozen=True)
class Hit:
    where: str
    label: str

    def __str__(self) -> str:
        return f"{self.label} found in {self.where}"


def secrets_of(token: str, codes: Iterable[str]) -> list[Secret]:
    """The token and every issued stream code (``issued_codes()`` of the simulator)."""
    found = [Secret("token", token)]
    found += [Secret(f"stream code #{i}", code) for i, code in enumerate(dict.fromkeys(codes))]
    for secret in found:
        if len(secret.value) < MIN_SECRET_LENGTH:
            raise ValueError(f"{secret.label} is too short to scan for reliably")
    return found


def _needles(value: str) -> set[bytes]:
    raw = value.encode()
    forms = {
        raw,
        quote(value, safe="").encode(),
        quote_plus(value).encode(),
        json.dumps(value)[1:-1].encode(),
        base64.b64encode(raw).rstrip(b"="),
        value.encode("utf-16-le"),
    }
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


class Scanner:
    """Collects hits over several places; ``hits`` is the result (empty: no leak)."""

    def __init__(self, secrets: Iterable[Secret]) -> None:
        self._needles = [(s.label, _needles(s.value)) for s in secrets]
        self.hits: list[Hit] = []
        self.places = 0  #: files, rows and texts looked at (a scan of nothing proves nothing)
        self.bytes_scanned = 0

    def scan_bytes(self, where: str, data: bytes) -> None:
        data = b"\x1f".join([data, *_unpacked_group_members(data)])
        self.places += 1
        self.bytes_scanned += len(data)
        lowered = data.lower()
        for label, needles in self._needles:
            if any(n in data or n.lower() in lowered for n in needles):
                self.hits.append(Hit(where, label))

    def scan_text(self, where: str, text: str) -> None:
        self.scan_bytes(where, text.encode("utf-8", "surrogatepass"))

    def scan_texts(self, texts: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        items = texts.items() if isinstance(texts, Mapping) else texts
        for where, text in items:
            self.scan_text(where, text)

    def scan_tree(self, root: str | os.PathLike[str]) -> None:
        """Every file under *root*, byte for byte (SQLite databases and their WAL files included)."""
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and not path.is_symlink():
                try:
                    self.scan_bytes(str(path), path.read_bytes())
                except OSError:
                    continue

    def scan_database(self, url: str | sa.URL, name: str | None = None) -> list[str]:
        """Every row of every table of the database at *url*; returns the table names scanned."""
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        label = name or sa.make_url(url).render_as_string(hide_password=True)
        scanned: list[str] = []
        try:
            metadata = sa.MetaData()
            metadata.reflect(engine)
            with engine.connect() as conn:
                for table in metadata.sorted_tables:
                    scanned.append(table.name)
                    for index, row in enumerate(conn.execute(sa.select(table))):
                        self.scan_bytes(f"{label}:{table.name}[{index}]", _row_bytes(row))
        finally:
            engine.dispose()
        return scanned


#: A group event's compressed members (``models.events.encode_group``) as JSON, a Python repr (the
#: triggerer's log line) or a log's escaped JSON: ``members_zlib": "<base64>``.
_PACKED = re.compile(rb"""members_zlib\\?['"]\s*:\s*\\?['"]([A-Za-z0-9+/=]+)""")


def _unpacked_group_members(data: bytes) -> list[bytes]:
    """The JSON text of every group event's compressed members found in *data*, so that a secret
    inside them is found too (compressed, it would match no needle)."""
    found = []
    for match in _PACKED.finditer(data):
        payload = {"status": GROUP_STATUS, PACKED_MEMBERS: match.group(1).decode()}
        try:
            found.append(json.dumps(group_members(payload)).encode())
        except InvalidEventError:
            found.append(b"")  # cut off by the end of a read, or not an event: nothing to unpack
    return found


def _row_bytes(row: Any) -> bytes:
    parts: list[bytes] = []
    for value in row:
        if value is None:
            continue
        if isinstance(value, (bytes, bytearray, memoryview)):
            parts.append(bytes(value))
        elif isinstance(value, (dict, list)):
            parts.append(json.dumps(value, default=str).encode())
        else:
            parts.append(str(value).encode("utf-8", "surrogatepass"))
    return b"\x1f".join(parts)
