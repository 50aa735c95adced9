"""Reconnecting client of the Upstox Portfolio Stream Feed: an async iterator of :class:`Update`.

The feed has no sequence numbers, no replay and no snapshot (``docs/PROTOCOL.md`` §2), so this client
recovers what it missed while disconnected the only way possible: after every connect it reads the
REST snapshots of what it subscribed to and emits them (``source="snapshot"``) *before* the live
messages that arrived meanwhile. The socket is opened and read *before* the snapshot is requested,
so nothing that happens during the snapshot is lost; overlaps are sorted out by the store's ordering
rule.

Each connect authorizes again (the authorized URL is single use). Transient failures (drops, close
codes, refused handshakes, timeouts, server errors) are retried forever with capped, jittered
exponential backoff plus our own minimum delay; an authentication failure (401/403) stops the client
and is raised to the consumer as :class:`~airflow_provider_upstox.exceptions.UpstoxAuthenticationError`
instead of being retried in a storm. No Airflow import here: the trigger gives the client two
callables, ``authorize`` and ``snapshot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from airflow_provider_upstox.exceptions import (
    UpstoxAuthenticationError,
    UpstoxStreamClosedError,
    UpstoxStreamError,
    UpstoxStreamProtocolError,
    redact_url,
)
from airflow_provider_upstox.models.updates import (
    SNAPSHOT,
    Update,
    next_seq,
    normalize_update_types,
    now_us,
    reserve_seqs,
    strip_deprecated,
)
from airflow_provider_upstox.stream.backoff import DelayFactory, exponential_backoff
from airflow_provider_upstox.stream.buffer import BufferClosedError, UpdateBuffer
from airflow_provider_upstox.stream.decode import FrameDecodeError, decode_frames, entry_size

log = logging.getLogger(__name__)

#: ``() -> single-use authorized ws(s) URL``; raises ``UpstoxAuthenticationError`` on 401/403.
Authorize = Callable[[], Awaitable[str]]
#: ``(update_type) -> REST rows`` (order book, positions, holdings or GTT orders).
Snapshot = Callable[[str], Awaitable[list[dict[str, Any]]]]


class _RedactingFilter(logging.Filter):
    """``websockets`` logs request lines at DEBUG: strip the single-use ``code`` from them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_ws_log = logging.getLogger(f"{__name__}.websockets")
_ws_log.addFilter(_RedactingFilter())


#: Most frames decoded in one go by the reader before it hands them to the buffer.
_CHUNK = 512


class _Connection(ClientConnection):
    """Counts reads from the socket (data frames, server pings, anything) for the idle watchdog.

    Counted per ``data_received`` call (one per TCP read, often hundreds of frames), not per frame:
    the watchdog only needs to know that something arrived. A subclass through ``connect``'s
    documented ``create_connection`` parameter, overriding the asyncio ``Protocol`` callback.
    """

    activity = 0

    def data_received(self, data: bytes) -> None:
        self.activity += 1
        super().data_received(data)


async def _take_ready(ws: ClientConnection, frames: list[bytes], limit: int) -> None:
    """Append the messages that have already arrived to *frames* (up to *limit*), without waiting.

    ``recv`` returns without suspending while a complete message is queued, so the loop below runs
    through everything the socket delivered in one go. The deadline of ``asyncio.timeout(0)`` has
    passed on entry, but it can only fire when this task suspends, which is exactly when ``recv``
    has nothing left and would wait for the network: the timeout cancels that one ``recv``, which
    websockets documents as safe (no message is lost; a fragmented message whose last fragment is
    still on its way is put back and returned whole later). Cost: one cancellation per chunk.
    On Python 3.10, which has no ``asyncio.timeout``, nothing is drained and the caller's loop awaits
    each message.
    """
    if sys.version_info < (3, 11):  # no asyncio.timeout: one message per await (about 25 % slower)
        return
    recv = ws.recv
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0):
            while len(frames) < limit:
                frames.append(await recv(False))


@dataclass
class StreamStats:
    """Counters of one client, cumulative over its reconnects."""

    connects: int = 0
    reconnects: int = 0
    authorizations: int = 0
    messages: int = 0
    decode_errors: int = 0
    snapshots: int = 0
    snapshot_rows: int = 0
    idle_timeouts: int = 0
    auth_failures: int = 0
    last_error: str | None = None
    last_close_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(exc: BaseException) -> str:
    """Exception type and text for logs; our exceptions never carry URLs or tokens."""
    return f"{type(exc).__name__}: {exc}"


class PortfolioStreamClient:
    """Reconnecting portfolio stream; ``async for update in client`` or :meth:`next_batch`.

    Use as ``async with PortfolioStreamClient(...) as stream:`` or call :meth:`aclose`. The first
    iteration starts the background connection task.

    :param authorize: returns a fresh single-use authorized stream URL.
    :param snapshot: returns the REST rows of one update type.
    :param update_types: subscribed types (see ``normalize_update_types``); snapshots cover these.
    :param account: Upstox user id stamped on every update.
    :param idle_timeout: seconds without any frame (data or server ping) before the connection is
        considered dead and replaced; ``None`` disables it.
    :param ping_interval: seconds between our WebSocket pings; ``ping_timeout`` is how long a pong may
        take before the connection is considered dead.
    :param max_frame_size: largest accepted frame in bytes; a bigger one closes the connection (1009).
    :param max_queue: frames websockets queues before it stops reading the socket (its high-water
        mark; see ``websockets.asyncio.client.connect``).
    :param queue_size: buffered updates before back-pressure reaches the socket.
    :param reconnect_delays: factory of delay iterators (reset after a healthy connection).
    :param min_reconnect_delay: floor of every reconnect delay, so an accept-then-drop server cannot
        make the client spin.
    :param healthy_after: a connection that lived this long resets the backoff.
    :param snapshot_on_connect: read the REST snapshots after every connect (default ``True``).
    """

    def __init__(
        self,
        authorize: Authorize,
        snapshot: Snapshot,
        update_types: str | Iterable[str] | None = None,
        *,
        account: str | None = None,
        idle_timeout: float | None = 90.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_frame_size: int = 1 << 20,
        max_queue: int = 256,
        queue_size: int = 10_000,
        reconnect_delays: DelayFactory | None = None,
        min_reconnect_delay: float = 0.5,
        healthy_after: float = 60.0,
        snapshot_on_connect: bool = True,
    ) -> None:
        self.update_types = normalize_update_types(update_types)
        self.account = account
        self.idle_timeout = idle_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_frame_size = max_frame_size
        self.max_queue = max_queue
        self.min_reconnect_delay = min_reconnect_delay
        self.healthy_after = healthy_after
        self.snapshot_on_connect = snapshot_on_connect
        self.stats = StreamStats()
        self.connection_epoch = 0
        self._authorize = authorize
        self._snapshot = snapshot
        self._delays = reconnect_delays or exponential_backoff
        self._buffer = UpdateBuffer(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._ws: _Connection | None = None
        self._held: tuple[list[Update], list[int]] | None = None
        self._held_flushed = asyncio.Event()
        self._closing = False
        self._decode_errors_logged = 0

    def __repr__(self) -> str:
        state = "closed" if self._closing else ("connected" if self.connected else "disconnected")
        return f"<PortfolioStreamClient {','.join(self.update_types)} epoch={self.connection_epoch} {state}>"

    # -- public API -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def pending(self) -> int:
        """Updates buffered and not yet consumed."""
        return len(self._buffer)

    def start(self) -> None:
        """Start the background connection task (idempotent; iteration starts it too)."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="upstox-portfolio-stream")

    async def __aenter__(self) -> PortfolioStreamClient:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> PortfolioStreamClient:
        self.start()
        return self

    async def __anext__(self) -> Update:
        """The next update. Raises the fatal error (authentication) once buffered updates are consumed."""
        self.start()
        try:
            return await self._buffer.get()
        except BufferClosedError:
            raise StopAsyncIteration from None

    async def next_batch(self, max_items: int, max_wait: float, timeout: float | None = None) -> list[Update]:
        """Wait for at least one update, then up to *max_wait* s until *max_items* are buffered.

        :param timeout: longest wait for the first update; ``[]`` when it passes (``None``: forever).
        :raises UpstoxAuthenticationError: the token was refused (after buffered updates are consumed).
        :raises UpstoxStreamClosedError: the client was closed.
        """
        return (await self.next_sized_batch(max_items, max_wait, timeout))[0]

    async def next_sized_batch(
        self, max_items: int, max_wait: float, timeout: float | None = None, max_bytes: int | None = None
    ) -> tuple[list[Update], int]:
        """:meth:`next_batch`, also cut at *max_bytes* of estimated encoded size (at least one update).

        The estimate of a stream update is its frame's length plus the fields :class:`Update` adds
        (see :func:`~airflow_provider_upstox.stream.decode.entry_size`); of a snapshot row, its
        encoded length. Nothing is encoded here.

        :returns: the batch and the sum of its size estimates.
        """
        self.start()
        try:
            return await self._buffer.get_sized_batch(max_items, max_wait, timeout, max_bytes)
        except BufferClosedError:
            raise UpstoxStreamClosedError("the portfolio stream client is closed") from None

    def unget(self, updates: Iterable[Update], sizes: Iterable[int] | None = None) -> None:
        """Return updates (with their size estimates, if known) to the front of the buffer."""
        self._buffer.unget(updates, sizes)

    async def aclose(self) -> None:
        """Stop reconnecting and close the socket (with a close handshake bounded by ``close_timeout``)."""
        self._closing = True
        self._buffer.close()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    # -- connection loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delays = self._delays()
        first = True
        while not self._closing:
            if not first:
                self.stats.reconnects += 1
                await asyncio.sleep(max(self.min_reconnect_delay, next(delays)))
            first = False
            self._connected_at: float | None = None
            try:
                await self._session()
            except UpstoxAuthenticationError as exc:
                self.stats.auth_failures += 1
                self.stats.last_error = _describe(exc)
                # INFO: the consumer decides what a refusal means (the trigger waits for a new token
                # and logs the episode's one warning), so this is not reported twice.
                log.info("Upstox portfolio stream stopped: the access token was refused: %s", exc)
                self._buffer.set_error(exc)
                return
            except BufferClosedError:
                return
            except Exception as exc:  # every other failure is transient: reconnect
                self.stats.last_error = _describe(exc)
                log.warning("Upstox portfolio stream interrupted (%s); reconnecting", self.stats.last_error)
            connected_at = self._connected_at
            if connected_at is not None and loop.time() - connected_at >= self.healthy_after:
                delays = self._delays()

    async def _open(self, url: str) -> _Connection:
        try:
            ws = await connect(
                url,
                create_connection=_Connection,
                max_size=self.max_frame_size,
                max_queue=self.max_queue,
                compression=None,  # Upstox sends small JSON frames; the simulator declines it too
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                logger=_ws_log,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise UpstoxStreamProtocolError(f"the stream handshake was refused with HTTP {status}") from None
        except InvalidURI:
            raise UpstoxStreamProtocolError("the authorized stream URL is not a WebSocket URL") from None
        except (InvalidHandshake, OSError, asyncio.TimeoutError) as exc:  # 3.10: not TimeoutError
            raise UpstoxStreamProtocolError(f"could not open the stream ({type(exc).__name__})") from None
        assert isinstance(ws, _Connection)
        return ws

    async def _session(self) -> None:
        """One connection: authorize, open, snapshot, then read until it ends (always by raising)."""
        url = await self._authorize()
        self.stats.authorizations += 1
        ws = await self._open(url)
        del url
        loop = asyncio.get_running_loop()
        self._ws = ws
        self._connected_at = loop.time()
        self.connection_epoch += 1
        epoch = self.connection_epoch
        self.stats.connects += 1
        log.info("Upstox portfolio stream connected (connection %d, %s)", epoch, ",".join(self.update_types))
        held: tuple[list[Update], list[int]] | None = ([], []) if self.snapshot_on_connect else None
        self._held = held
        self._held_flushed.clear()
        reader = loop.create_task(self._read(ws, epoch))
        tasks = {reader}
        if self.idle_timeout:
            tasks.add(loop.create_task(self._watch(ws, self.idle_timeout)))
        try:
            if held is not None:
                await self._take_snapshots(epoch)
                self._flush_held()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if reader not in done:
                self.stats.idle_timeouts += 1
                raise UpstoxStreamError(f"no frame for {self.idle_timeout} s: connection presumed dead")
            exc = reader.exception()
            if isinstance(exc, ConnectionClosed):
                frame = exc.rcvd
                code, reason = (frame.code, frame.reason) if frame is not None else (None, None)
                self.stats.last_close_code = code
                raise UpstoxStreamClosedError(
                    f"the stream closed (code {code}, reason {reason!r})", code=code, reason=reason
                ) from None
            if exc is not None:
                raise exc
            raise UpstoxStreamError("the stream reader ended unexpectedly")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self._flush_held()
            self._ws = None
            await self._close_socket(ws)

    def _flush_held(self) -> None:
        """Append the live messages held during the snapshot, in one step so the order is kept.

        They get new ``seq`` values so that ``seq`` increases in emission order: a live message
        received after the snapshot request began must win over the snapshot at the last tie-break.
        """
        held, self._held = self._held, None
        if held and held[0] and not self._buffer.closed:
            updates, sizes = held
            # may exceed maxsize by at most one buffer's worth
            first = reserve_seqs(len(updates))
            replace = msgspec.structs.replace
            self._buffer.extend([replace(u, seq=first + i) for i, u in enumerate(updates)], sizes)
        self._held_flushed.set()

    async def _take_snapshots(self, epoch: int) -> None:
        async def one(update_type: str) -> tuple[str, int, list[dict[str, Any]]]:
            started = now_us()
            return update_type, started, await self._snapshot(update_type)

        results = await asyncio.gather(*(one(t) for t in self.update_types), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            auth = [e for e in errors if isinstance(e, UpstoxAuthenticationError)]
            raise (auth or errors)[0]
        self.stats.snapshots += 1
        put, account, encode = self._buffer.put, self.account, msgspec.json.encode
        for result in results:
            assert not isinstance(result, BaseException)
            update_type, started, rows = result
            for row in rows:
                if not isinstance(row, dict):
                    self.stats.decode_errors += 1
                    continue
                self.stats.snapshot_rows += 1
                data = strip_deprecated(row)
                await put(
                    Update(
                        update_type=update_type,
                        data=data,
                        source=SNAPSHOT,
                        seq=next_seq(),
                        connection_epoch=epoch,
                        received_at_us=started,
                        account=account,
                    ),
                    entry_size(len(encode(data)), update_type, account),
                )

    async def _read(self, ws: _Connection, epoch: int) -> None:
        """Socket -> buffer, a chunk at a time: the first message is awaited, every message that
        arrived with it is taken without waiting (:func:`_take_ready`), the chunk is decoded with
        one clock read and appended to the buffer in one step. Decoding happens here so the
        consumer takes finished batches. Back-pressure: while the buffer is full, nothing is read,
        so websockets stops reading the socket and TCP pushes back on the server."""
        buffer, held_flushed = self._buffer, self._held_flushed
        recv = ws.recv
        while True:
            frames = [await recv(False)]
            try:
                # at most what fits in the buffer, so that it stays bounded by its maxsize
                held = self._held
                room = buffer.maxsize - (len(buffer) if held is None else len(held[0]))
                limit = min(_CHUNK, room)
                if limit > 1:
                    await _take_ready(ws, frames, limit)
            finally:  # even when the connection closes in the middle of a chunk
                self._deliver(frames, epoch)  # recv(False): bytes
            if self._held is not None:
                if len(self._held[0]) >= buffer.maxsize:
                    await held_flushed.wait()
            elif len(buffer) >= buffer.maxsize:
                await buffer.wait_for_space()

    def _deliver(self, frames: list[bytes], epoch: int) -> None:
        """Decode a chunk and append it to the buffer (or to the messages held during a snapshot)."""
        stats = self.stats
        updates, sizes, errors = decode_frames(
            frames, connection_epoch=epoch, received_at_us=now_us(), account=self.account
        )
        for size, exc in errors:
            stats.decode_errors += 1
            self._report_decode_error(exc, size)
        if not updates:
            return
        stats.messages += len(updates)
        held = self._held
        if held is not None:
            held[0].extend(updates)
            held[1].extend(sizes)
        elif not self._buffer.closed:
            self._buffer.extend(updates, sizes)

    def _report_decode_error(self, exc: FrameDecodeError, size: int) -> None:
        count = self.stats.decode_errors
        if count <= 10 or count % 1000 == 0:
            log.warning("Skipped a malformed stream frame of %d bytes (%d so far): %s", size, count, exc)

    @staticmethod
    async def _watch(ws: _Connection, idle_timeout: float) -> None:
        """Return once no frame at all (data or server ping) arrived for *idle_timeout* seconds."""
        loop = asyncio.get_running_loop()
        last, last_change = ws.activity, loop.time()
        step = idle_timeout / 4
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            if ws.activity != last:
                last, last_change = ws.activity, now
            elif now - last_change >= idle_timeout:
                return

    async def _close_socket(self, ws: _Connection) -> None:
        """Close handshake while discarding incoming frames, so a flooding server cannot stall it."""

        async def discard() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass

        drain = asyncio.get_running_loop().create_task(discard())
        try:
            await ws.close()
        except BaseException:
            ws.transport.abort()
            raise
        finally:
            drain.cancel()
