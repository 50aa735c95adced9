"""One ``apply()`` call's updates on their way to the writers: validated, partitioned, de-duplicated.

A :class:`Batch` validates its updates (:func:`.rows.prepare`) once, either all at once
(:meth:`Batch.validate`) or one by one as a writer consumes them (:meth:`Batch.stream`: the
PostgreSQL writer sends each order to its COPY stage while the rest is validated). Either way the
result is kept, so a retried write or a fallback writer reads the same rows without validating
again. The writers then ask for what each table needs: the winning state per key
(:meth:`Batch.winners`, by the same version bytes the database compares), the first update of each
distinct order state (:meth:`Batch.order_events`), the rejected updates and the progress rows.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

from airflow_provider_upstox.exceptions import InvalidUpdateError
from airflow_provider_upstox.models.updates import ORDER, Update
from airflow_provider_upstox.store import rows, schema, validation
from airflow_provider_upstox.store.rows import PreparedRow

log = logging.getLogger(__name__)

#: The state tables' update types, in the order a batch writes them (orders first).
UPDATE_TYPES: Final = tuple(schema.STATE_TABLES)
_KEY: Final = operator.attrgetter("key")


class Batch:
    """The updates of one ``apply()`` call, validated lazily and once.

    :param updates: the batch, in arrival order.
    :param account: the caller's account for updates that do not carry one.
    :param stream_key: the progress row's stream key (already checked by the caller).
    :param now: the batch's write time (``updated_at``, ``rejected_at``).
    :param write_id: random id of this batch, written into every row it writes.
    """

    def __init__(
        self, updates: list[Update], account: str | None, stream_key: str, now: datetime, write_id: int
    ) -> None:
        self.updates = updates
        self.account = account
        self.stream_key = stream_key
        self.now = now
        self.write_id = write_id
        #: Accepted updates, in batch order, with the update each came from (same positions).
        self.accepted: list[PreparedRow] = []
        self.sources: list[Update] = []
        #: ``upstox_rejected_updates`` rows.
        self.rejects: list[dict[str, Any]] = []
        self._by_type: dict[str, list[PreparedRow]] = {t: [] for t in UPDATE_TYPES}
        self._progress: dict[str, dict[str, Any]] = {}
        self._next = 0  # the next update to validate

    def part(self, positions: list[int], rejects: list[dict[str, Any]] | None = None) -> Batch:
        """A batch of the accepted updates at *positions* (already validated), plus *rejects*.

        Used to isolate what the database refuses: a part carries no progress row.
        """
        part = Batch([], self.account, self.stream_key, self.now, self.write_id)
        for i in positions:
            part._keep(self.sources[i], self.accepted[i])
        part.rejects = list(rejects or ())
        return part

    def with_progress_only(self, rejects: list[dict[str, Any]]) -> Batch:
        """A batch of *rejects* and this batch's progress rows (the tail of an isolated write)."""
        tail = self.part([], rejects)
        tail._progress = self._progress
        return tail

    # ------------------------------------------------------------------------------- validation
    def stream(self) -> Iterator[PreparedRow]:
        """Every accepted update in batch order, validating the rest of the batch as it goes.

        Resumable: a second iteration (a retry) yields what was already validated, then goes on.

        :raises ValueError: an update has no account and needs one: a caller error.
        """
        i = 0
        while True:
            if i < len(self.accepted):
                yield self.accepted[i]
                i += 1
            elif self._next < len(self.updates):
                self._validate_next()
            else:
                return

    def validate(self) -> None:
        """Validate every update not validated yet (see :meth:`stream`)."""
        while self._next < len(self.updates):
            self._validate_next()

    def _validate_next(self) -> None:
        update = self.updates[self._next]
        self._next += 1
        account = rows.resolve_account(update, self.account)
        try:
            if update.update_type not in rows.STORED_TYPES:
                raise InvalidUpdateError(
                    "unknown update type: no table stores it", update_type=update.update_type
                )
            if account is None:
                if update.update_type != ORDER:
                    key = update.key if isinstance(update.data, dict) else None
                    raise ValueError(
                        f"{update.update_type} update {key!r} has no account: pass apply(account=...) "
                        "(the Upstox user id of the connection); Upstox does not send it in these messages"
                    )
                raise InvalidUpdateError(
                    "no account: no user_id and none given", update_type=ORDER, key=update.key
                )
            prepared = rows.prepare(update, account, self.now, self.write_id)
        except InvalidUpdateError as exc:
            reject = validation.reject_row(update, account, str(exc), self.now)
            log.warning("Rejected %s", reject["error"])
            self.rejects.append(reject)
            return
        self._keep(update, prepared)
        self._track(prepared.row["account"], update)

    def _keep(self, update: Update, prepared: PreparedRow) -> None:
        self.accepted.append(prepared)
        self.sources.append(update)
        self._by_type[prepared.update_type].append(prepared)

    def _track(self, account: str, update: Update) -> None:
        entry = self._progress.get(account)
        if entry is None:
            entry = self._progress[account] = {
                "account": account,
                "stream_key": self.stream_key,
                "last_seq": update.seq,
                "last_received": update,  # the latest received; its datetime is built once, when written
                "batches": 1,
                "updates": 0,
                "updated_at": self.now,
            }
        entry["updates"] += 1
        if update.seq > entry["last_seq"]:
            entry["last_seq"] = update.seq
        if update.received_at_us > entry["last_received"].received_at_us:
            entry["last_received"] = update

    # --------------------------------------------------------------------- what the writers need
    def of_type(self, update_type: str) -> list[PreparedRow]:
        """Every accepted update of *update_type*, in batch order (duplicates included)."""
        return self._by_type[update_type]

    def winners(self, update_type: str) -> tuple[list[PreparedRow], int]:
        """The winning state per key of *update_type* (highest version, then first in the batch),
        sorted by key, and how many updates lost to another of the batch."""
        items = self._by_type[update_type]
        unique = self._sorted_if_unique(update_type)
        if unique is not None:
            return unique, 0
        best: dict[tuple[str, ...], PreparedRow] = {}
        for prepared in items:
            current = best.get(prepared.key)
            if current is None or prepared.version > current.version:
                best[prepared.key] = prepared
        return [best[k] for k in sorted(best)], len(items) - len(best)

    def order_events(self) -> list[PreparedRow]:
        """The first update of each distinct order state (its ``upstox_order_events`` row), by key."""
        unique = self._sorted_if_unique(ORDER)
        if unique is not None:  # one update per order: (key, state_id) sorts as the key does
            return unique
        first: dict[tuple[str, ...], PreparedRow] = {}
        for prepared in self._by_type[ORDER]:
            first.setdefault((*prepared.key, prepared.state_id), prepared)  # type: ignore[arg-type]
        return [first[k] for k in sorted(first)]

    def _sorted_if_unique(self, update_type: str) -> list[PreparedRow] | None:
        """The updates of *update_type* sorted by key when no key repeats (the common batch: nothing
        to choose between, found with C-level calls), else ``None``. A new list each call."""
        items = self._by_type[update_type]
        if len(set(map(_KEY, items))) != len(items):
            return None
        return sorted(items, key=_KEY)

    def progress_rows(self) -> list[dict[str, Any]]:
        """The ``upstox_stream_progress`` rows of the batch, one per account, sorted."""
        out = []
        for account in sorted(self._progress):
            entry = self._progress[account]
            row = {k: v for k, v in entry.items() if k != "last_received"}
            row["last_received_at"] = entry["last_received"].received_at
            out.append(row)
        return out
