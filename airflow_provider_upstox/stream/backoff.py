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


# -- spreading a fleet's reconnects ------------------------------------------------------------------

#: Reconnects per second a whole process aims at when all its streams drop at once (a server
#: restart): 1,000 streams come back over ~20 s instead of within the same half second.
DEFAULT_FLEET_RECONNECT_RATE = 50.0

_fleet_size = 0


def fleet_joined() -> None:
    """A stream of this process started its connection loop."""
    global _fleet_size
    _fleet_size += 1


def fleet_left() -> None:
    """A stream of this process ended its connection loop."""
    global _fleet_size
    _fleet_size = max(0, _fleet_size - 1)


def fleet_size() -> int:
    """Streams of this process running their connection loop now."""
    return _fleet_size


def fleet_spread(rate: float | None, rng: random.Random | None = None) -> float:
    """A random delay in ``[0, fleet_size() / rate)`` (full jitter), ``0.0`` when *rate* is ``None``.

    When every stream of a process loses its connection at the same moment, their first reconnects
    drawn from this window arrive at about *rate* per second in total, whatever the fleet's size:
    one stream waits at most ``1 / rate`` s, a thousand are spread over ``1000 / rate`` s. The
    per-stream exponential backoff still applies on top, from the second attempt on.
    """
    if not rate or rate <= 0:
        return 0.0
    return (rng or random).random() * _fleet_size / rate
