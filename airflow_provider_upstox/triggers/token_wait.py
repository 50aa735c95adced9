"""*Waiting for a new token*: what a portfolio stream does between a refused token and a new one.

Every Upstox access token dies at 03:30 India time and nothing can refresh it (``docs/PROTOCOL.md``
§6): the stream must wait until someone (the plugin's OAuth login or notifier, or a person pasting
a token) writes a new token into the Airflow connection, and then resume by itself. Retrying the
refused token helps nobody and, repeated by every stream of a deployment, looks like abuse to
Upstox. So, once Upstox refuses a token (401/403/``UDAPI100050`` at authorize, at a snapshot, at the
profile read, or at the reconnect after the server closed the socket), the stream:

- first tries once more at once (a normal connect attempt, whose first call is the cheap profile
  read): a single refusal can be Upstox's hiccup (or an injected fault), and one call is cheaper
  than a stream that stalls for 15 minutes. Only a second refusal of the same token starts an
  *episode*;
- then makes no call to Upstox with that token, except one *probe* (again a connect attempt) every
  ``probe_interval`` seconds (15 minutes by default), in case the refusal was Upstox's mistake;
- re-reads the connection every ``poll_interval`` seconds, asynchronously (``aget_connection``,
  one SHA-256; see ``UpstoxHook.atoken_fingerprint``): nothing blocks the triggerer's event loop,
  and the token never leaves the hook (only its 16-hex-digit fingerprint is compared and kept);
- reconnects, with the usual snapshot recovery, as soon as the fingerprint differs from the
  refused one: within ``poll_interval`` plus one connect.

The state of an episode is a :class:`~airflow_provider_upstox.models.events.TokenWaitEvent` (refused
fingerprint, start, last probe): in watch mode the trigger keeps it, in deferral mode it travels
through the operator's progress record and the next trigger's ``token_wait`` kwarg. The one warning,
metric and notifier call per episode are made by whoever knows an episode is new: the watcher
trigger itself, or the continuous operator (which alone can call an Airflow notifier).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any

import msgspec

from airflow_provider_upstox.hooks.upstox import UpstoxHook
from airflow_provider_upstox.models.events import TokenWaitEvent, exception_text
from airflow_provider_upstox.models.updates import now_us
from airflow_provider_upstox.triggers.metrics import report_token_refused, report_token_renewed

log = logging.getLogger(__name__)

#: Default seconds between two re-reads of the connection while waiting.
DEFAULT_POLL_INTERVAL = 3.0
#: Default seconds between two probes with a refused token (one call each).
DEFAULT_PROBE_INTERVAL = 900.0
#: Seconds during which a second refusal of a token confirms the first one (see the module docstring).
CONFIRM_WINDOW = 60.0


class WaitOutcome(str, enum.Enum):
    """Why :meth:`TokenWatch.wait` returned."""

    #: the connection holds another token: connect with it now
    RENEWED = "renewed"
    #: ``probe_interval`` has passed since the last call with the refused token: try it once more
    PROBE = "probe"
    #: the caller's deadline passed (deferral mode: time for a heartbeat event)
    DEADLINE = "deadline"


class TokenWatch:
    """Re-reads one connection's token fingerprint; decides when a stream may call Upstox again.

    One per trigger instance. It remembers the last token refused once (not yet an episode), so
    that the immediate second try can confirm it.
    """

    def __init__(
        self,
        conn_id: str,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
    ) -> None:
        if poll_interval <= 0 or probe_interval <= 0:
            raise ValueError("token_poll_interval and token_probe_interval must be positive")
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self._refused_once: tuple[str | None, float] | None = None  # (fingerprint, monotonic time)

    async def current_fingerprint(self) -> str | None:
        """The fingerprint of the connection's token now; ``None`` if it has none or cannot be read.

        A failed read (the secrets backend is down, the connection is being re-created) is not a
        reason to stop waiting: it is logged and counts as "no new token yet".
        """
        try:
            return await UpstoxHook(upstox_conn_id=self.conn_id).atoken_fingerprint()
        except Exception as exc:
            log.info("Could not re-read connection %r (%s); still waiting", self.conn_id, type(exc).__name__)
            return None

    async def wait(self, state: TokenWaitEvent, deadline: float | None = None) -> WaitOutcome:
        """Wait until the token changes, a probe is due, or the loop time *deadline* passes.

        The connection is read at once (a token written while the stream was failing counts), then
        every ``poll_interval`` seconds.
        """
        loop = asyncio.get_running_loop()
        while True:
            fingerprint = await self.current_fingerprint()
            if fingerprint is not None and fingerprint != state.refused_fingerprint:
                return WaitOutcome.RENEWED
            if now_us() - state.probed_at_us >= self.probe_interval * 1e6:
                return WaitOutcome.PROBE
            pause = self.poll_interval
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return WaitOutcome.DEADLINE
                pause = min(pause, left)
            await asyncio.sleep(pause)

    async def after_refusal(
        self,
        exc: BaseException,
        used_fingerprint: str | None,
        current: TokenWaitEvent | None,
        account: str | None,
    ) -> TokenWaitEvent | None:
        """The episode after Upstox refused the token with *used_fingerprint* (raising *exc*).

        - ``None``: connect again at once, no episode: the connection already holds another token
          (renewed while the stream was failing, or the stream started before a renewal), or this
          is the token's first refusal, which the second try confirms or not.
        - *current*, its probe time and count updated: a probe of the same token failed.
        - a new :class:`TokenWaitEvent`: a new episode begins (the caller reports it once).
        """
        now = now_us()
        if current is not None and current.refused_fingerprint == used_fingerprint:
            current.probed_at_us = now
            current.probes += 1
            log.info(
                "The access token of %r is still refused (probe %d); waiting for a new one",
                self.conn_id,
                current.probes,
            )
            return current
        fingerprint = await self.current_fingerprint()
        if fingerprint is not None and fingerprint != used_fingerprint:
            log.info("Connection %r already holds another access token; reconnecting with it", self.conn_id)
            return None
        once, self._refused_once = self._refused_once, (used_fingerprint, time.monotonic())
        if once is None or once[0] != used_fingerprint or time.monotonic() - once[1] > CONFIRM_WINDOW:
            log.info("Upstox refused the access token of %r; trying once more before waiting", self.conn_id)
            return None
        self._refused_once = None
        return TokenWaitEvent(
            refused_fingerprint=used_fingerprint,
            since_us=now,
            probed_at_us=now,
            message=exception_text(exc),
            account=account,
        )


def token_wait_from_json(value: dict[str, Any] | None) -> TokenWaitEvent | None:
    """The episode a trigger kwarg or progress record holds (the event's own payload), if any."""
    if not value:
        return None
    return msgspec.convert({**value, "status": "token_wait"}, TokenWaitEvent)


def warn_token_refused(conn_id: str, event: TokenWaitEvent) -> None:
    """The one warning and metric of a refusal episode (no secret: connection id, account, text)."""
    log.warning(
        "Upstox refused the access token of connection %r (account %s): %s. The stream waits for a "
        "new token in the connection (log in through the Upstox tokens page, approve a token request, "
        "or paste a token) and resumes by itself; no call is made with the refused token meanwhile "
        "except a probe now and then.",
        conn_id,
        event.account or "unknown",
        event.message,
    )
    report_token_refused(conn_id)


def note_token_renewed(conn_id: str, event: TokenWaitEvent) -> None:
    """Log and count the end of a refusal episode: the stream is connected again."""
    waited = max(0.0, (now_us() - event.since_us) / 1e6)
    log.info(
        "Connection %r has a working access token again; streaming resumed after %.0f s", conn_id, waited
    )
    report_token_renewed(conn_id, waited)
