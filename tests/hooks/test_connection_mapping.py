"""How connection fields map to client settings (pure: no Airflow lookup, no network)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_upstox.hooks.upstox import settings_from_connection

TOKEN = "a-token-0123456789"


def settings(**kwargs: Any) -> Any:
    fields: dict[str, Any] = {"conn_id": "c", "password": TOKEN, "host": None, "port": None, "extra": {}}
    fields.update(kwargs)
    return settings_from_connection(**fields)


def test_defaults() -> None:
    s = settings()
    assert s.config.base_url == "https://api.upstox.com"
    assert (s.config.timeout, s.config.verify) == (30.0, True)
    assert s.update_types == ("order", "position", "holding", "gtt_order")
    assert TOKEN not in repr(s)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("http://127.0.0.1:8765", None, "http://127.0.0.1:8765"),
        ("http://127.0.0.1:8765/", None, "http://127.0.0.1:8765"),
        ("api.upstox.com", None, "https://api.upstox.com"),
        ("127.0.0.1", 8765, "https://127.0.0.1:8765"),
        ("http://localhost", 81, "http://localhost:81"),
        ("", None, "https://api.upstox.com"),
    ],
)
def test_base_url(host: str, port: int | None, expected: str) -> None:
    assert settings(host=host, port=port).config.base_url == expected


@pytest.mark.parametrize(
    ("extra", "timeout", "verify", "types"),
    [
        ({"timeout": "2.5", "verify": "false"}, 2.5, False, ("order", "position", "holding", "gtt_order")),
        (
            {"timeout": 7, "verify": True, "update_types": "gtt_order,order"},
            7.0,
            True,
            ("order", "gtt_order"),
        ),
        ({"update_types": ["holding", "holding"], "verify": "0"}, 30.0, False, ("holding",)),
        ({"timeout": None, "update_types": ""}, 30.0, True, ("order", "position", "holding", "gtt_order")),
    ],
)
def test_extras(extra: dict[str, Any], timeout: float, verify: bool, types: tuple[str, ...]) -> None:
    s = settings(extra=extra)
    assert (s.config.timeout, s.config.verify, s.update_types) == (timeout, verify, types)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"password": None}, "no access token"),
        ({"password": "  "}, "no access token"),
        ({"extra": {"timeout": "soon"}}, "'timeout' must be a positive number"),
        ({"extra": {"timeout": -1}}, "'timeout' must be a positive number"),
        ({"extra": {"verify": "maybe"}}, "'verify' must be true or false"),
        ({"extra": {"update_types": "order,fills"}}, "'fills'.*valid values are"),
        ({"host": "ftp://x"}, "http:// or https://"),
    ],
)
def test_invalid(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        settings(**kwargs)
    assert TOKEN not in str(info.value)


def test_uri_form_round_trip() -> None:
    """The api-server hands the hook a connection through its URI form: the host keeps its scheme."""
    from airflow.sdk.definitions.connection import Connection

    conn = Connection(
        conn_id="x",
        conn_type="upstox",
        host="http://127.0.0.1:8765",
        password="t/o+k=n",
        extra='{"timeout": 3}',
    )
    back = Connection.from_uri(conn.get_uri(), conn_id="x")
    s = settings(password=back.password, host=back.host, port=back.port, extra=back.extra_dejson)
    assert s.config.base_url == "http://127.0.0.1:8765"
    assert s.config.access_token == "t/o+k=n"
    assert s.config.timeout == 3.0
