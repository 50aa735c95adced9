"""``UpstoxTokenPlugin``: renew Upstox access tokens from Airflow (page, OAuth login, notifier).

The FastAPI app (``app.create_app``) is mounted by the API server under ``/upstox``; the page is a
nav entry (*Admin > Upstox tokens*) showing ``/upstox/tokens`` inside the UI. The app is built only
in the API server process: other components (scheduler, triggerer, workers) load plugins too and
have no use for it (nor, on a task-SDK-only worker, for Airflow's API-server modules).
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_upstox.plugins.app import UI_ROUTE, URL_PREFIX


def _on_api_server() -> bool:
    return "api-server" in sys.argv or "api_server" in sys.argv


def _fastapi_apps() -> list[dict[str, Any]]:
    if not _on_api_server():
        return []
    from airflow_provider_upstox.plugins.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Upstox tokens"}]


class UpstoxTokenPlugin(AirflowPlugin):
    """The *Upstox tokens* page, the OAuth login and the notifier webhook."""

    name = "upstox_tokens"
    fastapi_apps = _fastapi_apps()
    external_views = [
        {
            "name": "Upstox tokens",
            "href": f"{URL_PREFIX}/tokens",
            "destination": "nav",
            "category": "admin",
            "url_route": UI_ROUTE,
        }
    ]
