"""``UpstoxPortfolioStreamTrigger``: batches of portfolio updates as trigger events.

Thin by design: the connection is resolved inside :meth:`run` (kwargs hold only a connection id,
never a token, because Airflow stores them as plain JSON), the reconnecting, snapshotting stream is
:class:`~airflow_provider_upstox.stream.PortfolioStreamClient`, and this class only batches, keeps
payloads small and secret-free, reports metrics, and hands the open connection over between
re-deferrals (:mod:`.handoff`).

Two modes (``mode="auto"`` picks by whether a task deferred to the trigger):

* ``deferral``: yield ONE event and return, as Airflow cancels a task's trigger after its first
  event. The open stream is released to the hand-off registry for the next instance, with the
  yielded batch kept as unacknowledged: the next instance first re-emits those of its updates whose
  ``seq`` is above its ``acked_seq`` kwarg (the highest seq the operator has committed; ``0`` on a
  fresh try; ``None``, the default, for a consumer that does not acknowledge), so a batch whose try
  died before its commit is not lost. When no update arrives for ``idle_timeout`` seconds, an
  idle event lets the operator evaluate its stop conditions.
* ``watch`` (an ``AssetWatcher``): run forever. Transient faults are absorbed by the stream client;
  a fatal one (:attr:`ErrorKind.fatal <airflow_provider_upstox.models.events.ErrorKind.fatal>`:
  the connection is missing or invalid) yields one error event and then waits
  ``auth_retry_delay`` seconds before trying again, because Airflow would restart a watcher that
  returns or raises within about a second, with no backoff.

A refused token (401/403/``UDAPI100050``, wherever it happens) is not an error but a state,
*waiting for a new token* (:mod:`.token_wait`): no call to Upstox with that token but a rare probe,
a re-read of the connection every ``token_poll_interval`` seconds, and a reconnect (with the
snapshot recovery of every connect) as soon as the connection holds another token. A watcher waits
in place, after one warning, one metric and one ``TokenWaitEvent`` per episode. In deferral mode the
trigger yields a ``TokenWaitEvent`` when an episode begins; the operator records it and re-defers
with it as ``token_wait``, and that trigger waits, yields the first batch after the reconnect, or a
``TokenWaitEvent`` heartbeat after ``idle_timeout`` (a chance to check stop conditions).

Events are the structs of :mod:`airflow_provider_upstox.models.events` (``BatchEvent``,
``IdleEvent``, ``TokenWaitEvent``, ``ErrorEvent``), sent as
:func:`~airflow_provider_upstox.models.events.encode_event` payloads; consumers read them with
:func:`~airflow_provider_upstox.models.events.decode_event`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar, Literal

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_upstox.client import AsyncUpstoxClient
from airflow_provider_upstox.client.aio import ashared_ssl_context
from airflow_provider_upstox.exceptions import is_token_refusal
from airflow_provider_upstox.hooks.upstox import UpstoxHook, snapshot_reader, token_fingerprint
from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    ErrorKind,
    EventStats,
    IdleEvent,
    StreamEvent,
    TokenWaitEvent,
    encode_event,
    exception_text,
)
from airflow_provider_upstox.models.updates import STREAM, Update, normalize_update_types, now_us
from airflow_provider_upstox.stream import PortfolioStreamClient
from airflow_provider_upstox.triggers.handoff import HandoffKey, StreamLease, registry
from airflow_provider_upstox.triggers.metrics import report
from airflow_provider_upstox.triggers.token_wait import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PROBE_INTERVAL,
    TokenWatch,
    WaitOutcome,
    note_token_renewed,
    token_wait_from_json,
    warn_token_refused,
)

log = logging.getLogger(__name__)

Mode = Literal["auto", "deferral", "watch"]
_MODES = ("auto", "deferral", "watch")
_EVENT_OVERHEAD = 512  # bytes of an event payload besides its updates


class UpstoxPortfolioStreamTrigger(BaseEventTrigger):  # type: ignore[misc]  # airflow is untyped here
    """Stream an Upstox account's order, position, holding and GTT updates as batched events.

    :param upstox_conn_id: the ``upstox`` connection (token, base URL); resolved in :meth:`run`.
    :param update_types: subset of ``order,position,holding,gtt_order``; ``None``: the connection's.
    :param max_batch_size: most updates per event.
    :param max_batch_wait: seconds to wait, after the first update, for a batch to fill.
    :param idle_timeout: seconds without any frame before the connection is replaced; in deferral
        mode also the wait without updates before an ``idle`` event.
    :param mode: ``"deferral"``, ``"watch"`` or ``"auto"`` (deferral when a task deferred to it).
    :param max_event_bytes: bound of one event's JSON; batches are cut to fit it. Sizes are
        estimated without encoding (a stream update by its frame's length, which exceeds its compact
        re-encoding; a snapshot row by its encoded length); one update bigger than the bound is
        still sent, alone.
    :param acked_seq: deferral mode: the highest update ``seq`` the consumer has durably committed
        (``0``: nothing, e.g. the first deferral of a try). A taken-over stream re-emits its last
        yielded updates above it before anything new. ``None``: the consumer does not acknowledge,
        nothing is re-emitted. Not a secret, a plain integer.
    :param token_wait: deferral mode: the refusal episode the stream is in (the payload of the last
        :class:`TokenWaitEvent`, as the operator recorded it): the trigger starts by waiting for a new
        token instead of calling Upstox. ``None``: not waiting. Holds no secret.
    :param token_poll_interval: seconds between re-reads of the connection while waiting.
    :param token_probe_interval: least seconds between two calls with a refused token.
    """

    #: Seconds a released stream stays open for the next instance (0 disables the hand-off).
    handoff_linger: ClassVar[float] = 30.0
    #: Seconds a watcher waits after a fatal error (a missing or invalid connection) before retrying;
    #: a refused token is waited out differently (``token_poll_interval``, ``token_probe_interval``).
    auth_retry_delay: ClassVar[float] = 300.0
    #: Seconds a watcher waits after a transient failure to start a stream (e.g. profile read failed).
    error_retry_delay: ClassVar[float] = 5.0
    #: Extra :class:`PortfolioStreamClient` options (tests shorten reconnect delays here).
    stream_options: ClassVar[dict[str, Any]] = {}
    #: Extra :class:`UpstoxHook` options (tests pass ``retry_wait``).
    hook_options: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        upstox_conn_id: str = UpstoxHook.default_conn_name,
        update_types: str | Iterable[str] | None = None,
        max_batch_size: int = 250,
        max_batch_wait: float = 1.0,
        idle_timeout: float = 90.0,
        mode: Mode = "auto",
        max_event_bytes: int = 256_000,
        acked_seq: int | None = None,
        token_wait: dict[str, Any] | None = None,
        token_poll_interval: float = DEFAULT_POLL_INTERVAL,
        token_probe_interval: float = DEFAULT_PROBE_INTERVAL,
    ) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_batch_wait < 0 or idle_timeout <= 0:
            raise ValueError("max_batch_wait must be >= 0 and idle_timeout > 0")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
        if max_event_bytes < 4096:
            raise ValueError("max_event_bytes must be at least 4096")
        self.upstox_conn_id = upstox_conn_id
        self.update_types = None if update_types is None else list(normalize_update_types(update_types))
        self.max_batch_size = int(max_batch_size)
        self.max_batch_wait = float(max_batch_wait)
        self.idle_timeout = float(idle_timeout)
        self.mode: Mode = mode
        self.max_event_bytes = int(max_event_bytes)
        self.acked_seq = None if acked_seq is None else int(acked_seq)
        self.token_wait = token_wait_from_json(token_wait)
        self._tokens = TokenWatch(upstox_conn_id, float(token_poll_interval), float(token_probe_interval))
        self._lease: StreamLease | None = None
        #: fingerprint of the token the last connect attempt used (what a refusal refers to)
        self._used_fingerprint: str | None = None
        #: the Upstox user id of the last stream, for events of attempts refused before the profile
        self._account: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "upstox_conn_id": self.upstox_conn_id,
                "update_types": self.update_types,
                "max_batch_size": self.max_batch_size,
                "max_batch_wait": self.max_batch_wait,
                "idle_timeout": self.idle_timeout,
                "mode": self.mode,
                "max_event_bytes": self.max_event_bytes,
                "acked_seq": self.acked_seq,
                "token_wait": None if self.token_wait is None else encode_event(self.token_wait),
                "token_poll_interval": self._tokens.poll_interval,
                "token_probe_interval": self._tokens.probe_interval,
            },
        )

    @property
    def handoff_key(self) -> HandoffKey:
        return (self.upstox_conn_id, None if self.update_types is None else tuple(self.update_types))

    def effective_mode(self) -> Literal["deferral", "watch"]:
        if self.mode != "auto":
            return self.mode
        return "deferral" if self.task_instance is not None else "watch"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        events = self._run_deferral() if self.effective_mode() == "deferral" else self._run_watch()
        async for event in events:
            yield event

    async def cleanup(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.aclose()

    # -- modes ------------------------------------------------------------------------------------

    async def _run_deferral(self) -> AsyncIterator[TriggerEvent]:
        wait = self.token_wait
        deadline = asyncio.get_running_loop().time() + self.idle_timeout
        while True:
            if wait is not None and await self._tokens.wait(wait, deadline) is WaitOutcome.DEADLINE:
                yield _trigger_event(wait)  # still waiting: a heartbeat, so stop rules get a look
                return
            try:
                lease = await self._acquire()
            except Exception as exc:
                if not is_token_refusal(exc):
                    yield _trigger_event(self._error_event(exc, None))
                    return
                refused = await self._tokens.after_refusal(exc, self._used_fingerprint, wait, self._account)
                if refused is not None and refused is not wait:
                    yield _trigger_event(refused)  # a new episode: the operator reports and records it
                    return
                wait = refused  # a failed probe (keep waiting) or already renewed (connect now)
                continue
            if wait is not None:
                log.info("Connection %r: connected again after the token refusal", self.upstox_conn_id)
                wait = None
            self._lease = lease
            try:
                event = await self._next_event(lease)
            except Exception as exc:
                self._drop_lease()
                if not is_token_refusal(exc):
                    yield _trigger_event(self._error_event(exc, lease.account))
                    return
                # Refused after a connect (the token expired mid-session): a new episode, unless the
                # connection already holds another token, which this instance connects with at once.
                refused = await self._tokens.after_refusal(exc, lease.token_fingerprint, None, lease.account)
                if refused is not None:
                    yield _trigger_event(refused)
                    return
                continue
            except BaseException:  # cancelled while waiting: the next instance takes the stream over
                self._release_lease()
                raise
            # Released before yielding: the triggerer may cancel this task right after taking the event.
            self._release_lease()
            yield _trigger_event(event)
            return

    async def _next_event(self, lease: StreamLease) -> StreamEvent:
        """Deferral mode: the one event of this instance, a batch or, after ``idle_timeout``, idle."""
        # What the previous instance yielded but the task has not committed (its try died after
        # the event): send it again before anything new, or it is lost (no reconnect, no snapshot).
        batch = lease.take_unacked(self.acked_seq)
        if batch:
            log.info(
                "Re-emitting %d updates not acknowledged by the task (acked_seq=%s)",
                len(batch),
                self.acked_seq,
            )
        else:
            batch, _ = await lease.stream.next_sized_batch(
                self.max_batch_size,
                self.max_batch_wait,
                self.idle_timeout,
                self._budget,
            )
        if batch:
            lease.unacked = batch
            return self._batch_event(lease, batch)
        return IdleEvent(
            account=lease.account,
            idle_since_us=now_us() - int(self.idle_timeout * 1e6),
            stats=self._stats(lease),
        )

    async def _run_watch(self) -> AsyncIterator[TriggerEvent]:
        wait: TokenWaitEvent | None = None
        while True:
            if wait is not None:
                await self._tokens.wait(wait)
            try:
                lease = await self._acquire()
            except Exception as exc:
                if is_token_refusal(exc):
                    refused = await self._tokens.after_refusal(
                        exc, self._used_fingerprint, wait, self._account
                    )
                    if refused is not None and refused is not wait:
                        warn_token_refused(self.upstox_conn_id, refused)
                        yield _trigger_event(refused)
                    wait = refused
                elif ErrorKind.of(exc).fatal:
                    yield _trigger_event(self._error_event(exc, None))
                    await asyncio.sleep(self.auth_retry_delay)
                else:
                    log.warning(
                        "Could not start the Upstox portfolio stream (%s); retrying", exception_text(exc)
                    )
                    await asyncio.sleep(self.error_retry_delay)
                continue
            if wait is not None:
                note_token_renewed(self.upstox_conn_id, wait)
                wait = None
            self._lease = lease
            try:
                next_batch, size, batch_wait, budget = (
                    lease.stream.next_sized_batch,
                    self.max_batch_size,
                    self.max_batch_wait,
                    self._budget,
                )
                while True:
                    batch, _ = await next_batch(size, batch_wait, None, budget)
                    if batch:
                        yield _trigger_event(self._batch_event(lease, batch))
            except Exception as exc:
                self._drop_lease()
                if is_token_refusal(exc):
                    wait = await self._tokens.after_refusal(exc, lease.token_fingerprint, None, lease.account)
                    if wait is not None:
                        warn_token_refused(self.upstox_conn_id, wait)
                        yield _trigger_event(wait)
                    continue
                error = self._error_event(exc, lease.account)
                yield _trigger_event(error)
                await asyncio.sleep(self.auth_retry_delay if error.fatal else self.error_retry_delay)
            finally:
                if self._lease is lease:  # cancelled (or the generator closed): close, don't linger
                    self._drop_lease()

    # -- helpers ----------------------------------------------------------------------------------

    async def _acquire(self) -> StreamLease:
        """The stream released by a previous instance, or a new one (profile read, then connect)."""
        lease = registry.take(self.handoff_key)
        if lease is not None:
            self._account = lease.account
            return lease
        hook = UpstoxHook(upstox_conn_id=self.upstox_conn_id, **self.hook_options)
        settings = await hook.aget_settings()
        self._used_fingerprint = token_fingerprint(settings.config.access_token)
        update_types = tuple(self.update_types or settings.update_types)
        # Loading the CA bundle blocks for ~0.1 s: done once per process, in a worker thread; the
        # client then reuses that shared TLS context and is cheap to create on the loop.
        await ashared_ssl_context(settings.config.verify)
        # No on_secret masking: the single-use URL goes from the REST client straight into the
        # stream client, which never logs it nor puts it in an exception. Masking one new value per
        # connect would grow Airflow's process-wide masker (one regex of every value ever added,
        # recompiled each time) for as long as the triggerer lives. The token is masked once.
        rest = AsyncUpstoxClient(settings.config, retry_wait=self.hook_options.get("retry_wait"))
        try:
            profile = await rest.get_profile()
            account = profile.get("user_id") or profile.get("userId")
        except BaseException:
            await rest.aclose()
            raise

        async def authorize() -> str:
            return await rest.authorize_portfolio_stream(update_types)

        async def snapshot(update_type: str) -> list[dict[str, Any]]:
            return await snapshot_reader(rest, update_type)()

        options: dict[str, Any] = {"idle_timeout": self.idle_timeout, **self.stream_options}
        stream = PortfolioStreamClient(
            authorize, snapshot, update_types, account=None if account is None else str(account), **options
        )
        stream.start()
        self._account = stream.account
        return StreamLease(
            key=self.handoff_key,
            stream=stream,
            rest=rest,
            account=stream.account,
            token_fingerprint=self._used_fingerprint,
        )

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            registry.release(lease, self.handoff_linger)

    def _drop_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            registry.discard(lease)

    @property
    def _budget(self) -> int:
        """Bytes the updates of one event may take (estimated, see ``next_sized_batch``)."""
        return self.max_event_bytes - _EVENT_OVERHEAD

    @staticmethod
    def _stats(lease: StreamLease, lag_ms: float | None = None) -> EventStats:
        s = lease.stream.stats
        return EventStats(
            connection=lease.stream.connection_epoch,
            handoffs=lease.handoffs,
            messages=s.messages,
            reconnects=s.reconnects,
            decode_errors=s.decode_errors,
            pending=lease.stream.pending,
            lag_ms=None if lag_ms is None else round(lag_ms, 1),
        )

    def _batch_event(self, lease: StreamLease, batch: list[Update]) -> BatchEvent:
        oldest = oldest_live_update_us(batch)
        lag_ms = (now_us() - oldest) / 1000 if oldest is not None else None
        report(lease, len(batch), lag_ms)
        return BatchEvent(account=lease.account, updates=batch, stats=self._stats(lease, lag_ms))

    @staticmethod
    def _error_event(exc: BaseException, account: str | None) -> ErrorEvent:
        event = ErrorEvent.from_exception(exc, account)
        log.error(
            "Upstox portfolio stream error event (%s, fatal=%s): %s", event.kind, event.fatal, event.message
        )
        return event


def _trigger_event(event: StreamEvent) -> TriggerEvent:
    return TriggerEvent(encode_event(event))


def oldest_live_update_us(batch: list[Update]) -> int | None:
    """``received_at_us`` of the batch's first live update (the stream lag; a snapshot row is not).

    Live updates sit in the buffer in arrival order, so the first one is the oldest.
    """
    return next((u.received_at_us for u in batch if u.source == STREAM), None)
