"""The bounded buffer between the socket reader and the consumer of the stream.

A ``deque`` with hand-rolled wake-ups instead of :class:`asyncio.Queue`: the reader appends whole
chunks of decoded frames (everything the socket had ready), the consumer takes whole batches, and
the reader wakes it only once the batch it asked for is complete (or its wait is over), so a flood
of small frames costs one wake-up per batch rather than one put and one get per message. When the
buffer is full the reader stops reading, the socket's own buffers fill, and TCP flow control pushes
back on the server: memory stays bounded (by ``maxsize`` plus one chunk).

Each update is stored with an estimate of its encoded size in bytes (the length of the frame it
was decoded from, plus the fields :class:`Update` adds), so that a consumer bounding its batches in
bytes does not have to encode them to find out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from airflow_provider_upstox.models.updates import Update, now_us


class BufferClosedError(Exception):
    """The buffer was closed and is empty: the stream is over."""


def _release(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


#: Size estimate of an update whose size nobody measured (see :meth:`UpdateBuffer.unget`).
DEFAULT_SIZE = 1024


class UpdateBuffer:
    """Bounded FIFO of updates with their size estimates: one or more producers, one consumer.

    :param maxsize: producers wait in :meth:`put` / :meth:`wait_for_space` once this many updates
        are buffered.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.items: deque[Update] = deque()
        self.sizes: deque[int] = deque()
        #: sum of ``sizes``
        self.nbytes = 0
        self._getter: asyncio.Future[None] | None = None
        self._want = 1
        self._want_bytes: int | None = None
        self._putter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        """Wake the consumer if its batch is complete (in updates or in bytes)."""
        getter = self._getter
        if getter is not None and not getter.done():
            want_bytes = self._want_bytes
            if len(self.items) >= self._want or (want_bytes is not None and self.nbytes >= want_bytes):
                getter.set_result(None)

    def extend(self, updates: list[Update], sizes: list[int]) -> None:
        """Append a chunk at once, even beyond ``maxsize``; the producer then awaits :meth:`wait_for_space`.

        :raises BufferClosedError: the buffer is closed.
        """
        if self._closed:
            raise BufferClosedError
        self.items.extend(updates)
        self.sizes.extend(sizes)
        self.nbytes += sum(sizes)
        self.notify()

    async def wait_for_space(self) -> None:
        """Return once fewer than ``maxsize`` updates are buffered.

        :raises BufferClosedError: the buffer was closed while waiting.
        """
        while len(self.items) >= self.maxsize:
            if self._closed:
                raise BufferClosedError
            if self._putter is None or self._putter.done():
                self._putter = asyncio.get_running_loop().create_future()
            await self._putter
        if self._closed:
            raise BufferClosedError

    async def put(self, update: Update, size: int = DEFAULT_SIZE) -> None:
        """Append *update*, waiting while the buffer is full.

        :raises BufferClosedError: the buffer was closed while waiting.
        """
        await self.wait_for_space()
        self.items.append(update)
        self.sizes.append(size)
        self.nbytes += size
        self.notify()

    def unget(self, updates: Iterable[Update], sizes: Iterable[int] | None = None) -> None:
        """Put *updates* back at the front, in order (a batch that did not fit in one event)."""
        updates = list(updates)
        size_list = [DEFAULT_SIZE] * len(updates) if sizes is None else list(sizes)
        if len(size_list) != len(updates):
            raise ValueError("one size per update")
        self.items.extendleft(reversed(updates))
        self.sizes.extendleft(reversed(size_list))
        self.nbytes += sum(size_list)

    def set_error(self, error: BaseException) -> None:
        """Raise *error* to the consumer once the buffered updates are consumed."""
        self._error = error
        _release(self._getter)

    def close(self) -> None:
        """Stop: waiting producers get :class:`BufferClosedError`, the consumer too once empty."""
        self._closed = True
        _release(self._getter)
        _release(self._putter)

    def _check_empty(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise BufferClosedError

    async def _wait(self, want: int, timeout: float | None, want_bytes: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._getter, self._want, self._want_bytes = fut, want, want_bytes
        handle = loop.call_later(timeout, _release, fut) if timeout is not None else None
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            self._getter = None

    def _take(self, count: int, max_bytes: int | None) -> tuple[list[Update], int]:
        items, sizes = self.items, self.sizes
        count = min(count, len(items))
        if max_bytes is None and count == len(items):
            batch = list(items)
            nbytes = sum(sizes)
            items.clear()
            sizes.clear()
            self.nbytes = 0
        else:
            popleft, pop_size = items.popleft, sizes.popleft
            batch, nbytes = [], 0
            limit = max_bytes if max_bytes is not None else -1
            while len(batch) < count:
                size = sizes[0]
                if limit >= 0 and batch and nbytes + size > limit:
                    break
                batch.append(popleft())
                nbytes += pop_size()
            self.nbytes -= nbytes
        if len(items) < self.maxsize:
            _release(self._putter)
        return batch, nbytes

    async def get(self) -> Update:
        """The next update, waiting for one.

        :raises BufferClosedError: closed and empty.
        :raises BaseException: the error given to :meth:`set_error`, once empty.
        """
        while not self.items:
            self._check_empty()
            await self._wait(1, None)
        self.nbytes -= self.sizes.popleft()
        update = self.items.popleft()
        if len(self.items) < self.maxsize:
            _release(self._putter)
        return update

    async def get_batch(self, max_items: int, max_wait: float, timeout: float | None = None) -> list[Update]:
        """Up to *max_items* updates: waits for the first, then until *max_wait* s after the oldest
        buffered update arrived (its ``received_at_us``) for the batch to fill.

        :param timeout: longest wait for the first update; ``[]`` when it passes (``None``: forever).
        Raises like :meth:`get` when nothing is buffered.
        """
        return (await self.get_sized_batch(max_items, max_wait, timeout))[0]

    async def get_sized_batch(
        self, max_items: int, max_wait: float, timeout: float | None = None, max_bytes: int | None = None
    ) -> tuple[list[Update], int]:
        """Like :meth:`get_batch`, also cut at *max_bytes* of estimated size (at least one update).

        :returns: the batch and the sum of its size estimates.
        """
        if not self.items:
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while not self.items:
                self._check_empty()
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return [], 0
                await self._wait(1, remaining)
        want = min(max_items, self.maxsize)  # a full buffer must complete the batch, not deadlock
        if (
            len(self.items) < want
            and (max_bytes is None or self.nbytes < max_bytes)
            and max_wait > 0
            and self._error is None
            and not self._closed
        ):
            # The wait counts from the oldest buffered update's arrival, not from this call: updates
            # that queued while nobody was asking (a deferral hand-off, a busy consumer) have
            # already waited, and waiting max_wait again would only add latency.
            age = (now_us() - self.items[0].received_at_us) / 1e6
            remaining = max_wait - age if age > 0 else max_wait
            if remaining > 0:
                await self._wait(want, remaining, max_bytes)
        return self._take(max_items, max_bytes)
