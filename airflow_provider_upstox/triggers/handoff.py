"""Connection hand-off between successive trigger instances in one triggerer process.

A deferrable operator re-defers after every event, and Airflow cancels its trigger after the first
event: without help, every batch would cost a profile read, an authorize, a WebSocket handshake and
four REST snapshots (measured in ``bench/trigger_throughput.py``: about a tenth of the throughput).
So a trigger that has yielded its event *releases* its open stream here instead of closing it; the
stream keeps reading into its bounded buffer for a short linger, and the next trigger instance with
the same connection id and update types *takes* it over, buffered messages included. Nothing is
lost in between, and nothing is duplicated. A lease nobody takes is closed when the linger ends; the
next instance then reconnects and recovers the gap through the snapshot on connect.

A yielded batch is not yet a persisted batch: the task's try can die (worker killed, database
error) between the event and the commit, and its retry would take the parked stream over and never
see that batch again. So a lease keeps the last batch it yielded as *unacknowledged*
(:attr:`StreamLease.unacked`) until the next instance learns, from the ``acked_seq`` its operator
read from the database, that it was committed; whatever was not is emitted again first
(:meth:`StreamLease.take_unacked`). Re-emitting is harmless: the store is idempotent.

Airflow 3.3's shared streams (``BaseEventTrigger.shared_stream_key``) do not fit this job: a group
stops as soon as its last subscriber leaves (no linger, so nothing survives a re-deferral), a late
subscriber misses what was broadcast before it joined, and a slow subscriber is failed rather than
pushed back on. This registry is plain asyncio and holds no Airflow object.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_provider_upstox.models.updates import Update
from airflow_provider_upstox.stream import PortfolioStreamClient

log = logging.getLogger(__name__)

#: (connection id, subscribed update types or ``None`` for the connection's default).
HandoffKey = tuple[str, tuple[str, ...] | None]


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


@dataclass(eq=False)
class StreamLease:
    """An open stream with what it needs to keep going (the REST client it authorizes through)."""

    key: HandoffKey
    stream: PortfolioStreamClient
    rest: _Closeable
    account: str | None
    #: fingerprint of the access token the stream authorizes with (a refusal refers to this token)
    token_fingerprint: str | None = None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    #: how many trigger instances have taken this stream over
    handoffs: int = 0
    #: counters already reported to Airflow's metrics, so only deltas are sent
    reported: dict[str, int] = field(default_factory=dict)
    #: the last batch yielded from this stream, until a later instance learns it was committed
    unacked: list[Update] = field(default_factory=list)

    def take_unacked(self, acked_seq: int | None) -> list[Update]:
        """The unacknowledged updates with ``seq > acked_seq``; clears the list.

        ``acked_seq`` is the highest seq the consumer has durably committed (``0``: nothing yet, as
        on a fresh try), so everything at or below it is dropped and the rest must be sent again
        before anything new. ``None`` means the consumer does not acknowledge at all (a plain
        ``run()`` loop): nothing is re-sent, or such a consumer would get the same batch forever.
        """
        pending, self.unacked = self.unacked, []
        if acked_seq is None:
            return []
        return [u for u in pending if u.seq > acked_seq]

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            await self.rest.aclose()


class HandoffRegistry:
    """Released leases by key, each closed when its linger runs out unless taken first."""

    def __init__(self) -> None:
        self._entries: dict[HandoffKey, tuple[StreamLease, asyncio.TimerHandle]] = {}
        self._closing: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, key: HandoffKey) -> StreamLease | None:
        """The lingering lease for *key*, if any, usable on the running loop."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        lease, timer = entry
        timer.cancel()
        if lease.loop is not asyncio.get_running_loop() or lease.stream.closed:
            self.discard(lease)
            return None
        lease.handoffs += 1
        return lease

    def release(self, lease: StreamLease, linger: float) -> None:
        """Keep *lease* open for *linger* seconds for the next instance (close now if ``linger <= 0``)."""
        if linger <= 0 or lease.stream.closed:
            self.discard(lease)
            return
        previous = self._entries.pop(lease.key, None)
        if previous is not None:  # two streams for one key: keep the newer, close the older
            previous[1].cancel()
            if previous[0] is not lease:
                self.discard(previous[0])
        timer = lease.loop.call_later(linger, self._expire, lease)
        self._entries[lease.key] = (lease, timer)

    def _expire(self, lease: StreamLease) -> None:
        entry = self._entries.get(lease.key)
        if entry is not None and entry[0] is lease:
            del self._entries[lease.key]
            log.info("Closing the Upstox portfolio stream of %r: no trigger took it over", lease.key[0])
            self.discard(lease)

    def discard(self, lease: StreamLease) -> None:
        """Close *lease* in the background (callable from ``finally`` blocks and sync code)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None or lease.loop is not running:
            if not lease.loop.is_closed():
                lease.loop.call_soon_threadsafe(self._spawn_close, lease)
            return
        self._spawn_close(lease)

    def _spawn_close(self, lease: StreamLease) -> None:
        task = lease.loop.create_task(lease.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose_all(self) -> None:
        """Close every lingering lease of the running loop and wait for pending closes."""
        entries, self._entries = self._entries, {}
        for lease, timer in entries.values():
            timer.cancel()
            self.discard(lease)
        loop = asyncio.get_running_loop()
        pending = [t for t in self._closing if t.get_loop() is loop]
        if pending:
            await asyncio.wait(pending)


#: The process-wide registry used by :class:`UpstoxPortfolioStreamTrigger`.
registry = HandoffRegistry()
