"""Settings of one Upstox REST client: where to connect, with what token, how hard to retry.

Kept apart from the clients so the hook can build it from an Airflow connection, and so it can be
shown in logs and tracebacks: its ``repr`` never contains the access token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: Upstox's live REST host (``docs/PROTOCOL.md`` §1). The sandbox host serves no portfolio feed.
DEFAULT_BASE_URL = "https://api.upstox.com"


@dataclass(frozen=True)
class UpstoxClientConfig:
    """Everything an :class:`~airflow_provider_upstox.client.UpstoxClient` needs.

    :param base_url: scheme and host (optionally port and path prefix) of the Upstox API.
    :param access_token: the OAuth access token sent as ``Authorization: Bearer``.
    :param timeout: seconds for connect, read, write and pool timeouts of one attempt.
    :param verify: verify the server's TLS certificate (turn off only for a local test server).
    :param max_attempts: attempts per call, the first included, for retryable failures
        (429, 5xx, timeouts, refused connections).
    :param max_retry_seconds: no retry is started once this much time has passed since the first
        attempt, or when the next wait would end after it.
    :param initial_backoff: first retry wait in seconds; it doubles per retry (with random jitter).
    :param max_backoff: cap on one exponential backoff wait, in seconds.
    :param max_retry_after: cap on a wait requested by a ``Retry-After`` header, in seconds.
    """

    base_url: str = DEFAULT_BASE_URL
    access_token: str = field(default="", repr=False)
    timeout: float = 30.0
    verify: bool = True
    max_attempts: int = 5
    max_retry_seconds: float = 60.0
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"Upstox base URL must start with http:// or https://, got {self.base_url!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def replace(self, **changes: object) -> UpstoxClientConfig:
        """A copy with *changes* applied (``dataclasses.replace``), validated again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
