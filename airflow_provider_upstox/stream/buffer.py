"""The bounded buffer between the socket reader and the consumer of the stream.

A ``deque`` with hand-rolled wake-ups instead of :class:`asyncio.Queue`: the consumer takes whole
batches, and the reader wakes it only once the batch it asked for is complete (or its wait is over),
so a flood of small frames costs one wake-up per batch rather than one per message. When the buffer is
full the reader waits, the socket's own buffers fill, and TCP flow control pushes back on the server:
memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from airflow_provider_upstox.models.updates import Update


class BufferClosedError(Exception):
    """The buffer was closed and is empty: the stream is over."""


def _release(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class UpdateBuffer:
    """Bounded FIFO of updates: one or more producers, one consumer.

    :param maxsize: producers wait in :meth:`put` once this many updates are buffered.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.items: deque[Update] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._want = 1
        self._putter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        """Wake the consumer if its batch is complete. Producers call it after appending to ``items``."""
        getter = self._getter
        if getter is not None and len(self.items) >= self._want and not getter.done():
            getter.set_result(None)

    async def put(self, update: Update) -> None:
        """Append *update*, waiting while the buffer is full.

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
        self.items.append(update)
        self.notify()

    def unget(self, updates: Iterable[Update]) -> None:
        """Put *updates* back at the front, in order (a batch that did not fit in one event)."""
        self.items.extendleft(reversed(list(updates)))

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

    async def _wait(self, want: int, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._getter, self._want = fut, want
        handle = loop.call_later(timeout, _release, fut) if timeout is not None else None
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            self._getter = None

    def _take(self, count: int) -> list[Update]:
        items = self.items
        count = min(count, len(items))
        if count == len(items):
            batch = list(items)
            items.clear()
        else:
            popleft = items.popleft
            batch = [popleft() for _ in range(count)]
        if len(items) < self.maxsize:
            _release(self._putter)
        return batch

    async def get(self) -> Update:
        """The next update, waiting for one.

        :raises BufferClosedError: closed and empty.
        :raises BaseException: the error given to :meth:`set_error`, once empty.
        """
        while not self.items:
            self._check_empty()
            await self._wait(1, None)
        update = self.items.popleft()
        if len(self.items) < self.maxsize:
            _release(self._putter)
        return update

    async def get_batch(self, max_items: int, max_wait: float, timeout: float | None = None) -> list[Update]:
        """Up to *max_items* updates: waits for the first, then up to *max_wait* s for the batch to fill.

        :param timeout: longest wait for the first update; ``[]`` when it passes (``None``: forever).
        Raises like :meth:`get` when nothing is buffered.
        """
        if not self.items:
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while not self.items:
                self._check_empty()
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return []
                await self._wait(1, remaining)
        want = min(max_items, self.maxsize)  # a full buffer must complete the batch, not deadlock
        if len(self.items) < want and max_wait > 0 and self._error is None and not self._closed:
            await self._wait(want, max_wait)
        return self._take(max_items)
