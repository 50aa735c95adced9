"""Reconnect delays for the portfolio stream.

A delay *generator* (not a fixed schedule) so that tests inject zeros and callers can plug in their
own policy, as ``websockets`` does with ``reconnect_delays``. The client adds its own minimum delay on
top: ``websockets`` resets its backoff after every successful handshake, so a server that accepts
then drops at once would otherwise make a client spin hot.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

#: A factory of delay iterators: called again whenever the backoff is reset.
DelayFactory = Callable[[], Iterator[float]]


def exponential_backoff(
    initial: float = 0.5,
    factor: float = 2.0,
    max_delay: float = 30.0,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Capped exponential delays with proportional jitter: ``initial``, ``initial*factor``, ... ``max_delay``.

    Each value is scaled by a random factor in ``[1 - jitter, 1]`` so that many clients dropped at the
    same moment (a server restart) do not reconnect in lock step.
    """
    draw = (rng or random).random
    delay = initial
    while True:
        yield delay * (1.0 - jitter * draw())
        delay = min(delay * factor, max_delay)


def no_delays() -> Iterator[float]:
    """Zero delays, for tests (the client's minimum delay still applies)."""
    while True:
        yield 0.0
