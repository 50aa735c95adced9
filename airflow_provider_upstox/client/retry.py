"""Retry policy of the REST clients, shared by sync and async (tenacity, not a hand-written loop).

What is retried (:func:`is_retryable`): 429, 5xx, timeouts and network failures before an answer.
All calls are idempotent ``GET``s, so repeating one is harmless. Never retried: 401/403 (the token
must be regenerated; retrying only burns rate limit), other 4xx and malformed answers (repeating
the same request gives the same answer).

How long (:func:`retry_options`): capped exponential backoff with additive random jitter,
bounded by ``max_attempts`` and by ``max_retry_seconds`` (no retry starts whose wait would end
after it). A ``Retry-After`` header on a 429 is honoured as a lower bound on the wait, capped by
``max_retry_after``. The base wait strategy is injectable so tests run with zero delays
(``tenacity.wait_none()``).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import tenacity
from tenacity.wait import wait_base

from airflow_provider_upstox.client.config import UpstoxClientConfig
from airflow_provider_upstox.exceptions import (
    UpstoxRateLimitError,
    UpstoxServerError,
    UpstoxTransportError,
)

log = logging.getLogger(__name__)

#: httpx failures worth another attempt: nothing (or nothing usable) came back.
_RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed attempt should be repeated. Decided on types, never on message text.

    Transport errors are judged by the httpx exception they were translated from (``__cause__``,
    set by :func:`~airflow_provider_upstox.client.core.translate_transport_error`'s caller).
    """
    if isinstance(exc, (UpstoxRateLimitError, UpstoxServerError)):
        return True
    if isinstance(exc, UpstoxTransportError):
        return isinstance(exc.__cause__, _RETRYABLE_TRANSPORT)
    return False


def default_wait(config: UpstoxClientConfig) -> wait_base:
    """Exponential backoff from ``initial_backoff`` capped at ``max_backoff``, plus up to
    ``initial_backoff`` of random jitter (spreads retries of many workers after a shared outage)."""
    return tenacity.wait_exponential(multiplier=config.initial_backoff, max=config.max_backoff) + (
        tenacity.wait_random(0, config.initial_backoff)
    )


class RetryAfterWait(wait_base):
    """Wraps a wait strategy so that a ``Retry-After`` of a 429 is a lower bound on the wait.

    :param base: the backoff strategy (injected in tests).
    :param cap: longest wait a ``Retry-After`` may impose, in seconds.
    """

    def __init__(self, base: wait_base, cap: float) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = float(self.base(retry_state))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, UpstoxRateLimitError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.cap))
        return delay


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    # str(exc) of our exceptions carries status, code, path: never the token or a stream URL.
    log.warning(
        "Upstox call failed (%s); attempt %d, retrying in %.2f s", exc, retry_state.attempt_number, wait
    )


def retry_options(config: UpstoxClientConfig, wait: wait_base | None = None) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying``/``AsyncRetrying`` implementing the policy above.

    ``reraise=True``: when retries run out the caller gets the last provider error (e.g.
    :class:`UpstoxServerError`), not tenacity's ``RetryError``.
    """
    return {
        "retry": tenacity.retry_if_exception(is_retryable),
        "stop": tenacity.stop_after_attempt(config.max_attempts)
        | tenacity.stop_before_delay(config.max_retry_seconds),
        "wait": RetryAfterWait(wait if wait is not None else default_wait(config), config.max_retry_after),
        "before_sleep": _log_retry,
        "reraise": True,
    }
