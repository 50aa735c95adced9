"""Postbacks without Airflow: strict parsing, the durable spool, the drain; the simulator's sender.

The plugin endpoint in front of them runs in a real API server in ``tests/plugins/test_postback_endpoint.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_upstox.models.updates import POSTBACK
from airflow_provider_upstox.postbacks import PostbackRejected, PostbackSpool, drain, parse_postback
from airflow_provider_upstox.simulator import RunningSimulator
from airflow_provider_upstox.store import PortfolioStore, schema
from tests.store.histories import order_message

ACCOUNT = "AB1234"


def test_a_valid_order_postback_becomes_a_postback_update() -> None:
    body = order_message("240221000000001", userId="AB1234", tradingsymbol="NHPC-EQ")
    update = parse_postback(body, ACCOUNT, received_us=1_708_500_000_000_000)
    assert (update.update_type, update.source, update.account) == ("order", POSTBACK, ACCOUNT)
    assert "userId" not in update.data  # deprecated duplicates dropped, like the stream's
    legacy = {k: v for k, v in body.items() if k != "update_type"}  # Upstox's older sample
    assert parse_postback(legacy, ACCOUNT).update_type == "order"
    gtt = {"update_type": "gtt_order", "gtt_order_id": "GTT-1", "type": "SINGLE", "rules": []}
    assert parse_postback(gtt, ACCOUNT).update_type == "gtt_order"  # GTT bodies carry no user_id


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([1, 2], "JSON object"),
        ({"update_type": "position", "instrument_token": "x", "product": "D"}, "update_type"),
        (order_message("1", user_id="ZZ9999"), "another user"),
        (order_message("1", userId="ZZ9999"), "another user"),
        ({k: v for k, v in order_message("1").items() if k != "user_id"}, "must carry user_id"),
        (order_message("1", status=5), "invalid order"),
        (order_message("1", order_timestamp="yesterday"), "invalid order"),
        (order_message("x" * 65), "invalid order"),
        (order_message("1", filled_quantity=-3), "invalid order"),
        ({"update_type": "gtt_order", "gtt_order_id": "G", "user_id": "ZZ9999"}, "another user"),
    ],
)
def test_forged_or_malformed_postbacks_are_refused(body: Any, problem: str) -> None:
    with pytest.raises(PostbackRejected, match=problem) as caught:
        parse_postback(body, ACCOUNT)
    assert caught.value.status == 422


def test_the_spool_survives_a_restart_and_drains_only_after_the_store_commits(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "postbacks.sqlite"
    first = PostbackSpool(path)
    for i in range(3):
        first.put("upstox_db", ACCOUNT, parse_postback(order_message(f"24022100000000{i}"), ACCOUNT))
    again = PostbackSpool(path)  # another process, or the API server restarted
    assert again.count() == 3

    def down(_: str) -> PortfolioStore:
        raise sa.exc.OperationalError("connect", {}, Exception("database is down"))

    with pytest.raises(sa.exc.OperationalError):
        drain(again, down)
    assert again.count() == 3  # nothing lost
    store = PortfolioStore.from_url(f"sqlite:///{tmp_path / 'store.sqlite'}")
    assert drain(again, lambda conn_id: store) == 3
    assert again.count() == 0
    assert drain(again, lambda conn_id: store) == 0
    ev = schema.order_events
    with store.engine.connect() as conn:
        assert set(conn.execute(sa.select(ev.c.source)).scalars()) == {POSTBACK}
    store.engine.dispose()


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    handler = type("Receiver", (_Receiver,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", handler.bodies
    server.shutdown()
    server.server_close()


def _configure(sim: RunningSimulator, **settings: Any) -> dict[str, Any]:
    import httpx

    params = {k: json.dumps(v) for k, v in settings.items()}
    answer = httpx.post(f"{sim.base_url}/_sim/postbacks", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


@pytest.mark.simulator(scenario="quiet", seed=3)
def test_the_simulator_posts_every_order_update_without_a_socket(
    simulator: RunningSimulator, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = receiver
    _configure(simulator, url=url)
    simulator.control.step(60)
    state = _configure(simulator, drain=10)
    orders = [h for o in simulator.control.state()["orders"].values() for h in o["history"]]
    assert state["counters"]["delivered"] == len(orders) == len(bodies)
    assert sorted(json.dumps(b, sort_keys=True) for b in bodies) == sorted(
        json.dumps(o, sort_keys=True) for o in orders
    )
    assert state["settings"]["url"] == "(set)"  # the URL holds a secret key: never shown


@pytest.mark.simulator(scenario="quiet", seed=3)
def test_postback_faults_drop_duplicate_and_reorder(
    simulator: RunningSimulator, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = receiver
    _configure(simulator, url=url, drop_probability=0.3, duplicate_probability=0.3, reorder_window=4)
    simulator.control.step(80)
    state = _configure(simulator, drain=10)["counters"]
    assert state["dropped"] > 0
    assert state["duplicated"] > 0
    assert len(bodies) == state["offered"] - state["dropped"] + state["duplicated"] == state["delivered"]
    histories = {
        oid: [(h["status"], h["filled_quantity"], h["order_request_id"]) for h in o["history"]]
        for oid, o in simulator.control.state()["orders"].items()
    }
    out_of_order = 0
    for oid, steps in histories.items():
        positions = [
            steps.index((b["status"], b["filled_quantity"], b["order_request_id"]))
            for b in bodies
            if b["order_id"] == oid
        ]
        out_of_order += positions != sorted(positions)
    assert out_of_order > 0  # some order's updates arrived out of order
    with pytest.raises(RuntimeError):
        simulator.control._send(("POST", "/_sim/postbacks", {"drop_probability": "2"}))
