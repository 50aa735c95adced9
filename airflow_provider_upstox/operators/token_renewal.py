"""``UpstoxTokenRenewalOperator``: request a new access token and wait, deferred, until it arrives.

``execute`` asks Upstox to prompt the account's owner (``UpstoxHook.request_access_token``), then
defers to :class:`~airflow_provider_upstox.triggers.token.UpstoxTokenRenewedTrigger` until the
plugin's notifier webhook has written the approved token into the connection. No worker slot is
held while the user picks up the phone. The request expiring (rejected, or not approved in time)
fails the task with a message saying what to do. XCom gets the connection id and the issue time
only: never the token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_upstox.client.login import IST
from airflow_provider_upstox.hooks.upstox import UpstoxHook
from airflow_provider_upstox.triggers.token import UpstoxTokenRenewedTrigger


class UpstoxTokenRenewalOperator(BaseOperator):  # type: ignore[misc]  # airflow is not type-checked
    """Renew the token of one ``upstox`` connection by phone approval (see the module docstring).

    :param upstox_conn_id: the connection; it needs ``client_id``, ``client_secret`` and ``user_id``.
    :param poll_interval: seconds between two reads of the connection while waiting.
    """

    template_fields: Sequence[str] = ("upstox_conn_id",)
    ui_color = "#f0e4ff"

    def __init__(self, *, upstox_conn_id: str = "upstox_default", poll_interval: float = 3.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.upstox_conn_id = upstox_conn_id
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> None:
        hook = UpstoxHook(self.upstox_conn_id)
        previous = hook.token_fingerprint()
        requested_at = int(time.time() * 1000)
        request = hook.request_access_token()
        wait = max(0.0, (request.authorization_expiry - requested_at) / 1000) + 60
        self.log.info(
            "Waiting for the owner of Upstox connection %r to approve the token request (until %s)",
            self.upstox_conn_id,
            _ist(request.authorization_expiry),
        )
        self.defer(
            trigger=UpstoxTokenRenewedTrigger(
                upstox_conn_id=self.upstox_conn_id,
                requested_at=requested_at,
                authorization_expiry=request.authorization_expiry,
                previous_fingerprint=previous,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=wait),
            kwargs={"authorization_expiry": request.authorization_expiry},
        )

    def execute_complete(
        self, context: Any, event: dict[str, Any], authorization_expiry: int | None = None
    ) -> dict[str, Any]:
        if event.get("status") == "renewed":
            self.log.info("Upstox connection %r holds the newly approved token", self.upstox_conn_id)
            return {"upstox_conn_id": self.upstox_conn_id, "issued_at": event.get("issued_at")}
        until = f" at {_ist(authorization_expiry)}" if authorization_expiry else ""
        raise AirflowFailException(
            f"The Upstox token request for connection {self.upstox_conn_id!r} expired{until} without an "
            "approval (it was rejected or not approved in the Upstox app / WhatsApp in time). The "
            "connection still holds its old token. Approve the next request, clear this task to ask "
            "again, or log in from Admin > Upstox tokens."
        )


def _ist(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, IST).strftime("%H:%M:%S IST")
