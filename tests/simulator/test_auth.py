"""The simulator's login side (docs/PROTOCOL.md §6) over real loopback HTTP.

OAuth dialog and code exchange, the access-token request approved or rejected through the control
API with the notifier POST to a real local HTTP server, and tokens expiring at a time of day or on
demand (REST refused, stream sockets closed).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from airflow_provider_upstox.client import login
from airflow_provider_upstox.simulator import RunningSimulator
from airflow_provider_upstox.simulator.auth import IST, fingerprint, next_time_of_day
from tests.simulator.conftest import authorize

APP = login.LoginApp("sim-client-id", "sim-client-secret", "http://127.0.0.1:9/callback")


def control(sim: RunningSimulator, name: str, **params: Any) -> httpx.Response:
    return httpx.post(
        f"{sim.base_url}/_sim/auth/{name}", params={k: json.dumps(v) for k, v in params.items()}, timeout=30
    )


def auth_state(sim: RunningSimulator) -> dict[str, Any]:
    return httpx.get(f"{sim.base_url}/_sim/auth").json()  # type: ignore[no-any-return]


def profile_status(sim: RunningSimulator, token: str) -> int:
    answer = httpx.get(f"{sim.base_url}/v2/user/profile", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code


def dialog_code(sim: RunningSimulator, state: str = "s1") -> str:
    answer = httpx.get(login.authorization_dialog_url(sim.base_url, APP, state))
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(APP.redirect_uri + "?")
    assert f"state={state}" in location
    return location.split("code=")[1].split("&")[0]


class Notifier:
    """A real local HTTP endpoint recording what the simulator POSTs to it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.headers["Content-Type"], json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def notifier() -> Iterator[Notifier]:
    n = Notifier()
    yield n
    n.server.shutdown()


def test_code_flow_issues_a_token_and_spends_the_code(simulator: RunningSimulator) -> None:
    code = dialog_code(simulator)
    answer = login.send(login.code_exchange_request(simulator.base_url, APP, code))
    issued = login.parse_code_exchange(answer)
    assert issued.user_id == "AB1234"
    assert answer.json()["email"]  # the profile comes with the token
    assert profile_status(simulator, issued.access_token) == 200
    assert profile_status(simulator, simulator.token) == 401  # the new token replaced the old one
    assert auth_state(simulator)["token_fingerprint"] == fingerprint(issued.access_token)
    again = login.send(login.code_exchange_request(simulator.base_url, APP, code))
    assert again.status_code == 400
    assert again.json()["errors"][0]["error_code"] == "UDAPI100057"


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"client_secret": "wrong"}, 401),
        ({"client_id": "other"}, 401),
        ({"redirect_uri": "http://127.0.0.1:9/elsewhere"}, 400),
    ],
)
def test_code_exchange_refusals_spend_the_code(
    simulator: RunningSimulator, change: dict[str, str], status: int
) -> None:
    code = dialog_code(simulator)
    fields = {
        "client_id": APP.client_id,
        "client_secret": APP.client_secret,
        "redirect_uri": APP.redirect_uri,
    }
    wrong = login.LoginApp(**{**fields, **change})
    assert login.send(login.code_exchange_request(simulator.base_url, wrong, code)).status_code == status
    right = login.send(login.code_exchange_request(simulator.base_url, APP, code))
    assert right.status_code == 400  # single-use whether the exchange worked or not
    assert profile_status(simulator, simulator.token) == 200


def test_dialog_refuses_an_unknown_app(simulator: RunningSimulator) -> None:
    other = login.LoginApp("nope", "x", APP.redirect_uri)
    answer = httpx.get(login.authorization_dialog_url(simulator.base_url, other, "s"))
    assert answer.status_code == 400


def test_token_request_approved_posts_the_notifier_payload(
    simulator: RunningSimulator, notifier: Notifier
) -> None:
    assert control(simulator, "config", notifier_url=notifier.url, request_ttl=30).status_code == 200
    started = int(time.time() * 1000)
    request = login.parse_token_request(login.send(login.token_request_request(simulator.base_url, APP)))
    assert started + 25_000 < request.authorization_expiry <= started + 31_000
    assert request.notifier_url == notifier.url
    delivery = control(simulator, "approve").json()
    assert delivery["status"] == 200
    ((content_type, payload),) = notifier.received
    assert content_type == "application/json"
    assert set(payload) == {
        "client_id", "user_id", "access_token", "token_type", "expires_at", "issued_at", "message_type",
    }  # fmt: skip
    assert (payload["client_id"], payload["user_id"], payload["message_type"]) == (
        "sim-client-id", "AB1234", "access_token",
    )  # fmt: skip
    assert int(payload["issued_at"]) >= started
    assert profile_status(simulator, payload["access_token"]) == 200
    assert control(simulator, "approve").status_code == 404  # nothing pending any more


def test_token_request_rejected_sends_nothing(simulator: RunningSimulator, notifier: Notifier) -> None:
    control(simulator, "config", notifier_url=notifier.url)
    login.send(login.token_request_request(simulator.base_url, APP))
    assert control(simulator, "reject").status_code == 200
    assert notifier.received == []
    assert auth_state(simulator)["rejected"] == 1
    assert profile_status(simulator, simulator.token) == 200


def test_token_request_refusals(simulator: RunningSimulator) -> None:
    wrong = login.LoginApp(APP.client_id, "wrong-secret")
    assert login.send(login.token_request_request(simulator.base_url, wrong)).status_code == 401
    other = login.LoginApp("other-app", APP.client_secret)
    assert login.send(login.token_request_request(simulator.base_url, other)).status_code == 401
    as_form = httpx.post(
        f"{simulator.base_url}/v3/login/auth/token/request/sim-client-id", data={"client_secret": "x"}
    )
    assert as_form.status_code == 415
    big = httpx.post(
        f"{simulator.base_url}/v3/login/auth/token/request/sim-client-id",
        content=b"{" + b" " * 100_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413
    assert auth_state(simulator)["pending"] == []


def test_a_pending_request_expires(simulator: RunningSimulator) -> None:
    control(simulator, "config", request_ttl=0.2)
    login.send(login.token_request_request(simulator.base_url, APP))
    time.sleep(0.3)
    assert control(simulator, "approve").status_code == 404


def test_issued_tokens_expire_at_the_configured_time_of_day(simulator: RunningSimulator) -> None:
    next_minute = datetime.fromtimestamp(time.time() + 61, IST).strftime("%H:%M")
    control(simulator, "config", expire_daily_at=next_minute)
    issued = login.parse_code_exchange(
        login.send(login.code_exchange_request(simulator.base_url, APP, dialog_code(simulator)))
    )
    expires = auth_state(simulator)["token_expires_at"]
    assert expires == next_time_of_day(time.time(), next_minute)
    assert 0 < expires - time.time() <= 61
    assert profile_status(simulator, issued.access_token) == 200


def test_default_expiry_is_0330_india_time() -> None:
    noon = datetime(2026, 3, 2, 12, 0, tzinfo=IST).timestamp()
    assert next_time_of_day(noon, "03:30") == datetime(2026, 3, 3, 3, 30, tzinfo=IST).timestamp()
    early = datetime(2026, 3, 2, 2, 30, tzinfo=IST).timestamp()  # one made at 02:30 lives one hour
    assert next_time_of_day(early, "03:30") - early == 3600
    assert login.next_daily_expiry(int(early * 1000)) - int(early * 1000) == 3_600_000


def test_expire_on_demand_refuses_rest_and_closes_streams(simulator: RunningSimulator) -> None:
    url = authorize(simulator)
    assert profile_status(simulator, simulator.token) == 200
    assert control(simulator, "expire").status_code == 200
    assert profile_status(simulator, simulator.token) == 401
    with pytest.raises(InvalidStatus):
        connect(url, open_timeout=5).close()
