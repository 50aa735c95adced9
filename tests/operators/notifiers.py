"""A real Airflow notifier for tests: keeps what ``on_token_refused`` told it instead of sending it."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier


class RecordingNotifier(BaseNotifier):  # type: ignore[misc]
    """Records the ``upstox_token_refused`` details of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def notify(self, context: Any) -> None:
        self.calls.append(dict(context["upstox_token_refused"]))
