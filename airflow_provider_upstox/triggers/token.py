"""``UpstoxTokenRenewedTrigger``: wait, deferred, until a connection holds a token newer than a request.

After ``UpstoxHook.request_access_token()`` the user approves on the phone and Upstox POSTs the
token to the plugin's notifier webhook, which writes it into the connection. This trigger re-reads
the connection every ``poll_interval`` seconds (async: ``aget_connection``, one hash) and fires once:

- ``{"status": "renewed", "issued_at": ...}`` when the token's fingerprint differs from the one
  before the request and, if the plugin recorded when it was issued, it was issued after the
  request (a token pasted by hand has no record and counts as new);
- ``{"status": "expired"}`` once ``authorization_expiry`` has passed (the request was rejected or
  ignored: on rejection Upstox sends nothing, ``docs/PROTOCOL.md`` §6).

Kwargs and events are plain JSON with no secret: a connection id, times, and a fingerprint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_upstox.hooks.upstox import UpstoxHook

#: Tolerated difference between Upstox's clock (``issued_at``) and ours (the request time).
CLOCK_SKEW_MS = 60_000


class UpstoxTokenRenewedTrigger(BaseTrigger):  # type: ignore[misc]  # airflow is not type-checked
    """See the module docstring.

    :param upstox_conn_id: the connection to watch.
    :param requested_at: epoch ms of the token request.
    :param authorization_expiry: epoch ms until which the user may approve.
    :param previous_fingerprint: fingerprint of the connection's token before the request.
    :param poll_interval: seconds between two reads of the connection.
    """

    def __init__(
        self,
        upstox_conn_id: str,
        requested_at: int,
        authorization_expiry: int,
        previous_fingerprint: str | None,
        poll_interval: float = 3.0,
    ) -> None:
        super().__init__()
        self.upstox_conn_id = upstox_conn_id
        self.requested_at = int(requested_at)
        self.authorization_expiry = int(authorization_expiry)
        self.previous_fingerprint = previous_fingerprint
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "upstox_conn_id": self.upstox_conn_id,
                "requested_at": self.requested_at,
                "authorization_expiry": self.authorization_expiry,
                "previous_fingerprint": self.previous_fingerprint,
                "poll_interval": self.poll_interval,
            },
        )

    def _renewed(self, fingerprint: str | None, record: dict[str, Any]) -> bool:
        if not fingerprint or fingerprint == self.previous_fingerprint:
            return False
        issued = record.get("issued_at")
        return not isinstance(issued, int) or issued >= self.requested_at - CLOCK_SKEW_MS

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = UpstoxHook(self.upstox_conn_id)
        while True:
            fingerprint, record = await hook.arenewal_state()
            if self._renewed(fingerprint, record):
                issued = record.get("issued_at")
                yield TriggerEvent(
                    {"status": "renewed", "issued_at": issued if isinstance(issued, int) else None}
                )
                return
            if time.time() * 1000 >= self.authorization_expiry:
                yield TriggerEvent({"status": "expired"})
                return
            await asyncio.sleep(self.poll_interval)
