"""The pure request core: request building and response parsing, no network.

Responses are built in memory (``httpx.Response``) because these functions take a response and
nothing else; the same paths run against the simulator in ``tests/hooks``.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from airflow_provider_upstox.client import UpstoxClientConfig, core
from airflow_provider_upstox.exceptions import (
    TOKEN_EXPIRY_HINT,
    UpstoxAPIError,
    UpstoxAuthenticationError,
    UpstoxMalformedResponseError,
    UpstoxRateLimitError,
    UpstoxServerError,
)

TOKEN = "tok-SECRET-0123456789"
CONFIG = UpstoxClientConfig(base_url="http://127.0.0.1:9/", access_token=TOKEN)


def response(
    status: int, body: Any = None, *, content: bytes | None = None, **headers: str
) -> httpx.Response:
    if content is not None:
        return httpx.Response(status, content=content, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {
        "status": "error",
        "errors": [{"errorCode": code, "error_code": code, "message": message, "propertyPath": None}],
    }


class TestConfig:
    def test_repr_hides_token(self) -> None:
        assert TOKEN not in repr(CONFIG)
        assert TOKEN not in str(CONFIG)

    def test_trailing_slash_removed(self) -> None:
        assert CONFIG.base_url == "http://127.0.0.1:9"

    @pytest.mark.parametrize("kwargs", [{"base_url": "api.upstox.com"}, {"timeout": 0}, {"max_attempts": 0}])
    def test_rejects_bad_values(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies per field
            UpstoxClientConfig(access_token=TOKEN, **kwargs)


class TestBuildRequest:
    def test_authorize_request(self) -> None:
        request = core.build_request(CONFIG, core.authorize("holding, order,order"))
        assert request.method == "GET"
        assert request.url.path == core.AUTHORIZE_PATH
        assert request.url.params["update_types"] == "order,holding"
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/json"

    def test_default_update_types_are_all_four(self) -> None:
        request = core.build_request(CONFIG, core.authorize(None))
        assert request.url.params["update_types"] == "order,position,holding,gtt_order"

    def test_invalid_update_types_rejected_naming_valid_ones(self) -> None:
        with pytest.raises(ValueError, match="valid values are order, position, holding, gtt_order"):
            core.authorize("order,trades")

    def test_order_id_required(self) -> None:
        with pytest.raises(ValueError, match="order_id"):
            core.order_history(" ")


class TestParseResponse:
    def test_success_returns_data(self) -> None:
        rows = [{"order_id": "1"}]
        assert (
            core.parse_response(response(200, {"status": "success", "data": rows}), core.order_book()) == rows
        )

    def test_null_list_is_empty(self) -> None:
        assert core.parse_response(response(200, {"status": "success", "data": None}), core.positions()) == []

    def test_401_is_authentication_error_with_hint(self) -> None:
        body = error_body("UDAPI100050", "Invalid token used to access API")
        with pytest.raises(UpstoxAuthenticationError) as info:
            core.parse_response(response(401, body), core.profile(), TOKEN)
        exc = info.value
        assert (exc.status_code, exc.error_code, exc.path) == (401, "UDAPI100050", core.PROFILE_PATH)
        assert exc.upstox_message == "Invalid token used to access API"
        text = str(exc)
        assert "invalid or expired" in text
        assert TOKEN_EXPIRY_HINT in text
        assert "03:30" in text

    def test_error_code_wins_over_status(self) -> None:
        body = error_body("UDAPI100050", "Invalid token")
        with pytest.raises(UpstoxAuthenticationError):
            core.parse_response(response(200, body), core.profile())

    @pytest.mark.parametrize(("header", "expected"), [(None, None), ("2", 2.0), ("0.5", 0.5), ("soon", None)])
    def test_429_rate_limit_with_retry_after(self, header: str | None, expected: float | None) -> None:
        headers = {"Retry-After": header} if header else {}
        with pytest.raises(UpstoxRateLimitError) as info:
            core.parse_response(response(429, error_body("UDAPI10005", "Too many"), **headers), core.trades())
        assert info.value.retry_after == expected
        assert info.value.error_code == "UDAPI10005"

    def test_retry_after_http_date(self) -> None:
        assert core.parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(
            10.0
        )

    def test_5xx_is_server_error_even_with_html(self) -> None:
        with pytest.raises(UpstoxServerError) as info:
            core.parse_response(response(503, content=b"<html>down</html>"), core.holdings())
        assert info.value.status_code == 503

    def test_other_4xx_is_api_error(self) -> None:
        with pytest.raises(UpstoxAPIError) as info:
            core.parse_response(response(404, error_body("UDAPI1", "nope")), core.holdings())
        assert type(info.value) is UpstoxAPIError

    @pytest.mark.parametrize(
        "resp",
        [
            response(200, content=b"<html>not json"),
            response(200, {"status": "partial", "data": []}),
            response(200, ["not", "an", "envelope"]),
            response(200, {"status": "success"}),
            response(200, {"status": "success", "data": {"not": "a list"}}),
            response(200, {"status": "success", "data": [1, 2]}),
        ],
    )
    def test_malformed(self, resp: httpx.Response) -> None:
        with pytest.raises(UpstoxMalformedResponseError):
            core.parse_response(resp, core.order_book())

    def test_token_echoed_by_upstox_is_scrubbed(self) -> None:
        body = error_body("UDAPI100050", f"Invalid token {TOKEN}")
        with pytest.raises(UpstoxAuthenticationError) as info:
            core.parse_response(response(401, body), core.profile(), TOKEN)
        assert TOKEN not in str(info.value)
        assert TOKEN not in repr(info.value)


class TestAuthorizedUri:
    URI = "wss://feed.example/v2/feed?requestId=REQ-1&code=CODE-SECRET"

    def test_snake_case_first(self, caplog: pytest.LogCaptureFixture) -> None:
        data = {"authorized_redirect_uri": self.URI, "authorizedRedirectUri": "wss://other/"}
        with caplog.at_level(logging.WARNING):
            assert core.read_authorized_uri(data) == self.URI
        assert not caplog.records

    def test_camel_case_fallback_warns(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING):
            assert core.read_authorized_uri({"authorizedRedirectUri": self.URI}) == self.URI
        assert any("deprecated" in r.getMessage() for r in caplog.records)
        assert all("CODE-SECRET" not in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize("data", [{}, {"authorized_redirect_uri": None}, {"authorized_redirect_uri": 5}])
    def test_missing(self, data: dict[str, Any]) -> None:
        with pytest.raises(UpstoxMalformedResponseError, match="authorized_redirect_uri"):
            core.read_authorized_uri(data)

    @pytest.mark.parametrize(
        "uri", ["https://feed.example/x?code=CODE-SECRET", "CODE-SECRET", "wss:///nohost?code=CODE-SECRET"]
    )
    def test_non_websocket_rejected_without_showing_it(self, uri: str) -> None:
        with pytest.raises(UpstoxMalformedResponseError) as info:
            core.check_stream_uri(uri)
        assert "CODE-SECRET" not in str(info.value)
        assert "CODE-SECRET" not in repr(info.value)

    @pytest.mark.parametrize("uri", [URI, "ws://127.0.0.1:1/feed?code=x", "WSS://HOST/feed"])
    def test_websocket_accepted(self, uri: str) -> None:
        assert core.check_stream_uri(uri) == uri


def test_stream_uri_secrets_lists_uri_and_credentials() -> None:
    uri = "wss://h/v2/feed/socket?requestId=REQ-12345&code=CODE-67890&update_types=order"
    assert core.stream_uri_secrets(uri) == (uri, "REQ-12345", "CODE-67890")
    assert core.stream_uri_secrets("not a url") == ("not a url",)
