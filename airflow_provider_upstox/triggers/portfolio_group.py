"""``UpstoxPortfolioGroupStreamTrigger``: one watcher for a group of Upstox accounts (issue 18).

With one ``AssetWatcher`` per account, a thousand accounts are a thousand watched assets: the
persist task must read each one's events with its own call to Airflow's execution API (about 0.1 s
each on two loaded cores, measured by ``bench/watcher_dag_scale.py``), the scheduler tracks a
thousand queued assets, and the DAG file serializes a thousand watchers. This trigger streams a
*group* of accounts on one event loop, one :class:`UpstoxPortfolioStreamTrigger` (watch mode) per
account, and yields what the members produced together: one event
``{"status": "group", "members": "[<member event>, ...]"}`` (the members as one JSON string:
:func:`~airflow_provider_upstox.models.events.encode_group`) per ``group_wait`` seconds at most (or
per ``max_members`` member events), so one asset per group carries them, with one asset event per
group batch instead of one per account batch (every asset event read costs the persist task, and
the API server that serves it, a fixed share plus one in proportion to the JSON values of its
``extra``: hence the members as one string). Each member event is unchanged (a
``BatchEvent``, ``TokenWaitEvent`` or ``ErrorEvent`` payload naming its account) plus the member's
connection id (``"conn_id"``: not a secret), so the consumer knows which connection an account's
backfill uses.

Each account keeps everything its own trigger does (reconnects, snapshot recovery, token waits,
error events); one account's failure never stops the others: a member whose stream ends or raises
is logged and restarted after ``UpstoxPortfolioStreamTrigger.error_retry_delay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_upstox.models.events import encode_group
from airflow_provider_upstox.models.updates import normalize_update_types
from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

log = logging.getLogger(__name__)

#: Member events waiting to be yielded before the members' batches are held back (back-pressure).
QUEUE_EVENTS = 1000


class UpstoxPortfolioGroupStreamTrigger(BaseEventTrigger):  # type: ignore[misc]  # airflow is untyped here
    """Stream several Upstox accounts' portfolios as one trigger (watch mode only).

    :param upstox_conn_ids: the ``upstox`` connections of the group (each resolved by its member
        trigger inside :meth:`run`; the kwargs hold only ids).
    :param update_types, max_batch_size, max_batch_wait, idle_timeout: as for
        :class:`~airflow_provider_upstox.triggers.portfolio_stream.UpstoxPortfolioStreamTrigger`,
        for every member.
    :param group_wait: seconds to wait, after a member's event, for other members' events to join it.
    :param max_members: most member events in one group event.
    :param max_bytes: bound of one group event's JSON (a member event alone may exceed it: each is
        bounded by the member's own ``max_event_bytes``, 256 kB).
    """

    def __init__(
        self,
        upstox_conn_ids: Iterable[str],
        update_types: str | Iterable[str] | None = None,
        max_batch_size: int = 250,
        max_batch_wait: float = 1.0,
        idle_timeout: float = 90.0,
        group_wait: float = 0.25,
        max_members: int = 50,
        max_bytes: int = 1_000_000,
    ) -> None:
        super().__init__()
        if group_wait < 0 or max_members < 1:
            raise ValueError("group_wait must be >= 0 and max_members at least 1")
        self.upstox_conn_ids = list(dict.fromkeys(upstox_conn_ids))
        if not self.upstox_conn_ids:
            raise ValueError("a group needs at least one connection id")
        self.update_types = None if update_types is None else list(normalize_update_types(update_types))
        self.max_batch_size = int(max_batch_size)
        self.max_batch_wait = float(max_batch_wait)
        self.idle_timeout = float(idle_timeout)
        self.group_wait = float(group_wait)
        self.max_members = int(max_members)
        self.max_bytes = int(max_bytes)
        self._members = [self._member(conn_id) for conn_id in self.upstox_conn_ids]

    def _member(self, conn_id: str) -> UpstoxPortfolioStreamTrigger:
        return UpstoxPortfolioStreamTrigger(
            upstox_conn_id=conn_id,
            update_types=self.update_types,
            max_batch_size=self.max_batch_size,
            max_batch_wait=self.max_batch_wait,
            idle_timeout=self.idle_timeout,
            mode="watch",
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "upstox_conn_ids": self.upstox_conn_ids,
                "update_types": self.update_types,
                "max_batch_size": self.max_batch_size,
                "max_batch_wait": self.max_batch_wait,
                "idle_timeout": self.idle_timeout,
                "group_wait": self.group_wait,
                "max_members": self.max_members,
                "max_bytes": self.max_bytes,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_EVENTS)
        tasks = [
            asyncio.create_task(self._drive(member, queue), name=f"upstox-group-{member.upstox_conn_id}")
            for member in self._members
        ]
        loop = asyncio.get_running_loop()
        carry: dict[str, Any] | None = None  # the member event that did not fit the last group event
        try:
            while True:
                first = carry if carry is not None else await queue.get()
                carry = None
                members, size = [first], _size(first)
                deadline = loop.time() + self.group_wait
                while len(members) < self.max_members:
                    if queue.empty():
                        left = deadline - loop.time()
                        if left <= 0:
                            break
                        try:
                            member = await asyncio.wait_for(queue.get(), left)
                        except asyncio.TimeoutError:  # not the builtin before Python 3.11
                            break
                    else:
                        member = queue.get_nowait()
                    size += _size(member)
                    if size > self.max_bytes:
                        carry = member
                        break
                    members.append(member)
                yield TriggerEvent(encode_group(members))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(
        self, member: UpstoxPortfolioStreamTrigger, queue: asyncio.Queue[dict[str, Any]]
    ) -> None:
        """Run one member forever, tagging its events with its connection id."""
        conn_id = member.upstox_conn_id
        while True:
            agen = member.run()  # an async generator (aclose() below)
            try:
                async for event in agen:
                    if isinstance(event.payload, dict):
                        await queue.put({**event.payload, "conn_id": conn_id})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one member's failure must not stop the group
                log.error("The stream of %s failed (%s); restarting it", conn_id, type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):
                    await agen.aclose()  # type: ignore[attr-defined]
                with contextlib.suppress(Exception):
                    await member.cleanup()
            await asyncio.sleep(UpstoxPortfolioStreamTrigger.error_retry_delay)

    async def cleanup(self) -> None:
        for member in self._members:
            with contextlib.suppress(Exception):
                await member.cleanup()


def _size(payload: dict[str, Any]) -> int:
    return len(msgspec.json.encode(payload))
