"""Authorize, the direct-connect redirect and the single-use socket URL, over real loopback HTTP/WS."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from airflow_provider_upstox.simulator import RunningSimulator
from tests.simulator.conftest import AUTHORIZE, auth_headers, authorize, open_stream, recv_json

pytestmark = pytest.mark.simulator(scenario="quiet")

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
INVALID_TOKEN_BODY = {
    "status": "error",
    "errors": [
        {
            "errorCode": "UDAPI100050",
            "error_code": "UDAPI100050",
            "message": "Invalid token used to access API",
            "propertyPath": None,
            "property_path": None,
            "invalidValue": None,
            "invalid_value": None,
        }
    ],
}


def test_authorize_returns_single_use_url_under_both_keys(simulator: RunningSimulator) -> None:
    r = httpx.get(
        simulator.base_url + AUTHORIZE,
        params={"update_types": "order,position"},
        headers=auth_headers(simulator),
        trust_env=False,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success"
    url = body["data"]["authorized_redirect_uri"]
    assert body["data"]["authorizedRedirectUri"] == url
    parts = urlsplit(url)
    assert parts.scheme == "ws"
    assert parts.netloc == simulator.base_url.split("://")[1]
    assert parts.path == "/v2/feed/portfolio-stream-feed/socket"
    query = parse_qs(parts.query)
    assert UUID.match(query["requestId"][0])
    assert UUID.match(query["code"][0])
    assert query["code"][0] in simulator.control.issued_codes()["issued_codes"]
    assert simulator.control.counters()["authorizations"] == 1


@pytest.mark.parametrize(
    ("mode", "present", "absent"),
    [
        ("snake", "authorized_redirect_uri", "authorizedRedirectUri"),
        ("camel", "authorizedRedirectUri", "authorized_redirect_uri"),
    ],
)
def test_authorize_key_switch(simulator: RunningSimulator, mode: str, present: str, absent: str) -> None:
    simulator.control.authorize_keys(mode)
    data = httpx.get(simulator.base_url + AUTHORIZE, headers=auth_headers(simulator), trust_env=False).json()[
        "data"
    ]
    assert present in data
    assert absent not in data


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic abc", "Bearer"])
def test_authorize_without_valid_bearer_is_401_udapi100050(
    simulator: RunningSimulator, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = httpx.get(simulator.base_url + AUTHORIZE, headers=headers, trust_env=False)
    assert r.status_code == 401
    assert r.json() == INVALID_TOKEN_BODY
    assert simulator.control.counters()["codes_issued"] == 0


@pytest.mark.parametrize("types", ["orders", "order,margin", "ORDER"])
def test_invalid_update_types_is_400(simulator: RunningSimulator, types: str) -> None:
    r = httpx.get(
        simulator.base_url + AUTHORIZE,
        params={"update_types": types},
        headers=auth_headers(simulator),
        trust_env=False,
    )
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error"
    assert body["errors"][0]["error_code"] == body["errors"][0]["errorCode"]
    assert "update_types" in body["errors"][0]["message"]


async def test_plain_websockets_client_gets_only_subscribed_types(simulator: RunningSimulator) -> None:
    url = authorize(simulator, "position,holding")
    async with open_stream(url) as ws:
        simulator.control.step(400)
        messages = await recv_json(ws, 20)
    assert {m["update_type"] for m in messages} == {"position", "holding"}


async def test_default_update_types_is_order_only(simulator: RunningSimulator) -> None:
    url = authorize(simulator, None)
    async with open_stream(url) as ws:
        simulator.control.step(200)
        messages = await recv_json(ws, 30)
    assert {m["update_type"] for m in messages} == {"order"}


async def test_used_code_is_refused_with_403(simulator: RunningSimulator) -> None:
    url = authorize(simulator)
    async with open_stream(url):
        pass
    with pytest.raises(InvalidStatus) as excinfo:
        async with open_stream(url):
            pass
    assert excinfo.value.response.status_code == 403
    assert simulator.control.counters()["refused_handshakes"] == 1


@pytest.mark.parametrize("tamper", ["code", "requestId"])
async def test_unknown_code_or_wrong_request_id_is_refused(simulator: RunningSimulator, tamper: str) -> None:
    url = authorize(simulator)
    query = parse_qs(urlsplit(url).query)
    query[tamper] = ["00000000-0000-4000-8000-000000000000"]
    bad = url.split("?")[0] + f"?requestId={query['requestId'][0]}&code={query['code'][0]}"
    with pytest.raises(InvalidStatus) as excinfo:
        async with open_stream(bad):
            pass
    assert excinfo.value.response.status_code == 403


async def test_plain_http_get_on_socket_url_does_not_burn_the_code(simulator: RunningSimulator) -> None:
    url = authorize(simulator)
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.get(url.replace("ws://", "http://"))
    assert r.status_code == 426
    async with open_stream(url) as ws:  # still usable
        simulator.control.step(5)
        assert await recv_json(ws, 1)


async def test_direct_connect_redirects_to_a_fresh_authorized_url(simulator: RunningSimulator) -> None:
    direct = simulator.ws_direct_url("order,gtt_order").replace("ws://", "http://")
    async with httpx.AsyncClient(trust_env=False, headers=auth_headers(simulator)) as http:
        first, second = await http.get(direct), await http.get(direct)
    assert first.status_code == second.status_code == 302
    assert first.headers["location"] != second.headers["location"]
    assert "/v2/feed/portfolio-stream-feed/socket?requestId=" in first.headers["location"]
    # websockets' own client follows the redirect too, sending the header again
    async with open_stream(
        simulator.ws_direct_url("order,gtt_order"),
        additional_headers={"Authorization": f"Bearer {simulator.token}"},
    ) as ws:
        simulator.control.step(300)
        messages = await recv_json(ws, 40)
    assert {m["update_type"] for m in messages} == {"order", "gtt_order"}


def test_direct_connect_without_token_is_401(simulator: RunningSimulator) -> None:
    r = httpx.get(simulator.ws_direct_url().replace("ws://", "http://"), trust_env=False)
    assert r.status_code == 401
    assert r.json() == INVALID_TOKEN_BODY


def test_unknown_path_is_404_and_control_api_is_apart(simulator: RunningSimulator) -> None:
    r = httpx.get(simulator.base_url + "/v2/nothing", headers=auth_headers(simulator), trust_env=False)
    assert r.status_code == 404
    assert r.json()["status"] == "error"
    r = httpx.get(simulator.base_url + "/_sim/nothing", trust_env=False)
    assert r.status_code == 400
