"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

The connection form is declarative (Airflow 3.2+): ``conn-fields`` (extra fields as JSON-schema
snippets, stored in the connection's ``extra``) and ``ui-field-behaviour`` (hidden, relabelled and
placeholder standard fields). The API server serves them to the UI from this dict without importing
the hook. ``package-name`` must equal the distribution name, or ``airflow providers list`` breaks.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_upstox import __version__

_INTEGRATION = "Upstox"


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata, validated in tests against Airflow's ``provider_info.schema.json``."""
    return {
        "package-name": "airflow-provider-upstox",
        "name": "Upstox",
        "description": (
            "`Upstox <https://upstox.com/developer/api-documentation/>`__ Portfolio Stream Feed: "
            "orders, positions, holdings and GTT orders, streamed and kept in your SQL database.\n"
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://upstox.com/developer/api-documentation/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_provider_upstox.hooks.upstox",
                    "airflow_provider_upstox.hooks.store",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_provider_upstox.triggers.portfolio_stream",
                    "airflow_provider_upstox.triggers.token",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_upstox.operators"],
            }
        ],
        # Deprecated since Airflow 2.2 but harmless next to connection-types (ignored when both exist).
        "hook-class-names": ["airflow_provider_upstox.hooks.upstox.UpstoxHook"],
        "connection-types": [
            {
                "connection-type": "upstox",
                "hook-class-name": "airflow_provider_upstox.hooks.upstox.UpstoxHook",
                "hook-name": "Upstox",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port"],
                    "relabeling": {"password": "Access token", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://api.upstox.com",
                        "password": "Upstox access token (expires 03:30 India time daily)",
                    },
                },
                "conn-fields": {
                    "update_types": {
                        "label": "Update types",
                        "description": (
                            "Comma separated portfolio update types to stream: order, position, holding, "
                            "gtt_order."
                        ),
                        "schema": {
                            "type": ["string", "null"],
                            "default": "order,position,holding,gtt_order",
                            "pattern": r"^\s*(order|position|holding|gtt_order)"
                            r"(\s*,\s*(order|position|holding|gtt_order))*\s*$",
                        },
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "Timeout of one REST request attempt, in seconds.",
                        "schema": {"type": ["number", "null"], "default": 30, "minimum": 1},
                    },
                    "verify": {
                        "label": "Verify TLS certificate",
                        "description": "Turn off only for a local server with a self-signed certificate.",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    # Token renewal (issue 16): all optional; a token-only connection works as before.
                    "client_id": {
                        "label": "API key (client_id)",
                        "description": "API key of your Upstox app: needed to renew the token from Airflow.",
                        "schema": {"type": ["string", "null"], "maxLength": 100},
                    },
                    "client_secret": {
                        "label": "API secret (client_secret)",
                        "description": "API secret of your Upstox app. Masked like the token.",
                        # "secret" in the key makes Airflow mask it in the API and logs; the format
                        # makes the form a password input.
                        "schema": {"type": ["string", "null"], "format": "password", "maxLength": 200},
                    },
                    "redirect_uri": {
                        "label": "Redirect URI",
                        "description": (
                            "Redirect URI registered for the app; empty: this Airflow's "
                            "/upstox/oauth/callback (see Admin > Upstox tokens)."
                        ),
                        "schema": {"type": ["string", "null"], "maxLength": 500},
                    },
                    "user_id": {
                        "label": "Expected Upstox user id",
                        "description": (
                            "The account this connection is for. A token for another user is refused, "
                            "and phone approvals are routed to this connection by it."
                        ),
                        "schema": {"type": ["string", "null"], "maxLength": 50},
                    },
                },
            }
        ],
    }
