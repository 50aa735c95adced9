"""Fault switches and named scenarios of the simulator.

Every switch is a field of :class:`Faults`; ``POST /_sim/faults`` sets the fields it names (``null``
restores a field's default) and leaves the others alone. Faults are applied by the server, never by
the market model, and draw their randomness from their own generator, so switching a fault on does
not change the market history a seed produces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final

#: Close codes the drop fault may use; ``"reset"`` aborts the TCP connection instead (RST).
DROP_MODES: Final = (1000, 1001, 1011, "reset")
KEY_MODES: Final = ("both", "snake", "camel")
# added by issue-3 helper: malformed authorize answers for the hook tests
AUTHORIZE_RESPONSES: Final = ("normal", "not_json", "no_uri", "non_ws_uri", "status_error")


@dataclass
class Faults:
    """Current fault switches (all off by default).

    Stream faults act on each WebSocket connection's outgoing messages; HTTP faults on requests.
    """

    # -- stream: connection drops
    drop_every: int = 0  #: drop each connection after it has sent this many model messages (0 = off)
    drop_probability: float = 0.0  #: chance to drop the connection after each message
    drop_mode: int | str = 1011  #: close code 1000/1001/1011, or "reset" (abrupt TCP reset)
    # -- stream: silence
    hang: bool = False  #: stop sending messages and pings and stop reading (a silent, dead peer)
    stop_pings: bool = False  #: never send keepalive pings
    ping_interval: float | None = None  #: override the server's idle ping interval (seconds)
    # -- stream: message order and timing
    duplicate_probability: float = 0.0  #: chance to send a message twice
    reorder_window: int = 0  #: shuffle messages within windows of this many (0/1 = off)
    delay: float = 0.0  #: deliver each message this many seconds after it happened
    # -- stream: bad frames, injected after every N-th model message (0 = off)
    malformed_every: int = 0
    unknown_type_every: int = 0
    oversized_every: int = 0
    oversized_bytes: int = 2 * 1024 * 1024
    # -- HTTP
    authorize_fail_status: int = 0  #: 401/403/429/5xx for authorize and the direct connect path
    authorize_fail_count: int = 0  #: how many of the next authorize requests fail
    rest_fail_status: int = 0  #: same for the REST reads
    rest_fail_count: int = 0
    retry_after: float | None = None  #: Retry-After header (seconds) on injected 429 answers
    rest_delay: float = 0.0  #: seconds before answering any REST or authorize request
    authorize_keys: str = "both"  #: "both", "snake" (authorized_redirect_uri) or "camel" only
    # added by issue-3 helper: "normal", or a malformed 200 answer to authorize: "not_json" (HTML body),
    # "no_uri" (empty data), "non_ws_uri" (an https URL that still carries a real code), "status_error"
    authorize_response: str = "normal"
    refuse_handshakes: int = 0  #: refuse the next N socket handshakes with HTTP 500
    # -- token
    token_expires_at: float | None = None  #: epoch seconds after which the token is refused
    # free-form, for scenario bookkeeping
    notes: dict[str, Any] = field(default_factory=dict)

    def update(self, changes: dict[str, Any]) -> None:
        """Set the named switches; ``None`` restores a switch's default.

        :raises ValueError: for an unknown switch or a value of the wrong kind.
        """
        defaults = Faults()
        names = {f.name: f for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in names:
                raise ValueError(f"unknown fault switch {name!r}; known: {', '.join(sorted(names))}")
            if value is None:
                setattr(self, name, getattr(defaults, name))
                continue
            setattr(self, name, _coerce(name, value, getattr(defaults, name)))
        if self.drop_mode not in DROP_MODES:
            raise ValueError(f"drop_mode must be one of {DROP_MODES}")
        if self.authorize_keys not in KEY_MODES:
            raise ValueError(f"authorize_keys must be one of {KEY_MODES}")
        if self.authorize_response not in AUTHORIZE_RESPONSES:  # added by issue-3 helper
            raise ValueError(f"authorize_response must be one of {AUTHORIZE_RESPONSES}")

    @property
    def stream_active(self) -> bool:
        """True when any per-message stream fault is on (the writer's slow path)."""
        return bool(
            self.drop_every
            or self.drop_probability
            or self.duplicate_probability
            or self.reorder_window > 1
            or self.delay
            or self.malformed_every
            or self.unknown_type_every
            or self.oversized_every
            or self.hang
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name == "drop_mode":
        return value if value == "reset" else int(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    if isinstance(default, float) or (default is None and name != "notes"):
        return float(value)
    return value


@dataclass(frozen=True)
class Scenario:
    """A named preset: market rate (updates/s, 0 = stopped), ping interval and fault switches."""

    description: str
    rate: float
    ping_interval: float = 20.0
    faults: dict[str, Any] = field(default_factory=dict)


SCENARIOS: Final[dict[str, Scenario]] = {
    "default": Scenario("a steady trickle of realistic updates, no faults", rate=10.0),
    "quiet": Scenario("market stopped: updates only on POST /_sim/market steps=N", rate=0.0),
    "busy": Scenario("a busy account: 200 updates/s", rate=200.0),
    "flaky": Scenario(
        "a bad network: drops, duplicates, reordering, a failing authorize",
        rate=20.0,
        faults={
            "drop_probability": 0.01,
            "drop_mode": "reset",
            "duplicate_probability": 0.02,
            "reorder_window": 3,
            "authorize_fail_status": 503,
            "authorize_fail_count": 1,
        },
    ),
    "flood": Scenario(
        "for benchmarks: market stopped, use POST /_sim/flood count=N", rate=0.0, ping_interval=60.0
    ),
}
