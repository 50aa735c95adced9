"""``UpstoxTokenPlugin``: renew Upstox access tokens from Airflow (page, OAuth login, notifier).

The FastAPI app (``app.create_app``) is mounted by the API server under ``/upstox``; the page is a
nav entry (*Admin > Upstox tokens*) showing ``/upstox/tokens`` inside the UI. The app is built only
in the API server process: other components (scheduler, triggerer, workers) load plugins too and
have no use for it, and building it imports Airflow's API-server modules (seconds). The API server
is recognised by its command (``airflow api-server``, or ``uvicorn``/``gunicorn`` serving Airflow's
app); ``UPSTOX_TOKEN_PLUGIN_APP=1`` forces the app for any other way of starting it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_upstox.plugins.app import STREAMS_UI_ROUTE, UI_ROUTE, URL_PREFIX


def _on_api_server() -> bool:
    if os.environ.get("UPSTOX_TOKEN_PLUGIN_APP", "").strip().lower() in ("1", "true", "yes"):
        return True
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "api-server" in sys.argv or "api_server" in sys.argv or program in ("uvicorn", "gunicorn")


def _fastapi_apps() -> list[dict[str, Any]]:
    if not _on_api_server():
        return []
    from airflow_provider_upstox.plugins.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Upstox tokens"}]


class UpstoxTokenPlugin(AirflowPlugin):
    """The *Upstox tokens* and *Upstox streams* pages, the OAuth login and the webhooks."""

    name = "upstox_tokens"
    fastapi_apps = _fastapi_apps()
    external_views = [
        {
            "name": "Upstox tokens",
            "href": f"{URL_PREFIX}/tokens",
            "destination": "nav",
            "category": "admin",
            "url_route": UI_ROUTE,
        },
        {
            "name": "Upstox streams",
            "href": f"{URL_PREFIX}/streams",
            "destination": "nav",
            "category": "browse",
            "url_route": STREAMS_UI_ROUTE,
        },
    ]
