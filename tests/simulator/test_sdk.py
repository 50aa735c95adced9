"""The official ``upstox-python-sdk`` streamer, a client no one here wrote, against the simulator.

Only the SDK's hard-coded URL is patched (``docs/PROTOCOL.md`` §1 B): it connects to the direct path
with its Bearer header, follows our HTTP 302 to the single-use socket URL (websocket-client does the
redirect) and must receive every update type.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import upstox_client
from upstox_client.feeder.portfolio_data_feeder import PortfolioDataFeeder

from airflow_provider_upstox.simulator import RunningSimulator

pytestmark = pytest.mark.simulator(scenario="quiet", seed=11)


@pytest.fixture
def streamer(
    simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[upstox_client.PortfolioDataStreamer]:
    original = PortfolioDataFeeder.get_websocket_url

    def local_url(feeder: PortfolioDataFeeder) -> str:
        # The query string the SDK builds itself, pointed at the simulator instead of api.upstox.com.
        return str(original(feeder)).replace(
            "wss://api.upstox.com", simulator.base_url.replace("http://", "ws://")
        )

    monkeypatch.setattr(PortfolioDataFeeder, "get_websocket_url", local_url)
    configuration = upstox_client.Configuration()
    configuration.access_token = simulator.token
    api_client = upstox_client.ApiClient(configuration)
    s = upstox_client.PortfolioDataStreamer(
        api_client,
        order_update=True,
        position_update=True,
        holding_update=True,
        gtt_update=True,
    )
    yield s
    s.auto_reconnect(False)
    if s.feeder is not None and s.feeder.ws is not None:
        s.disconnect()
    # The SDK's ApiClient.__del__ joins a ThreadPool; at interpreter exit that prints
    # "Error during ApiClient cleanup". Shut the pool down while the interpreter is healthy.
    api_client.pool.close()
    api_client.pool.join()


def test_sdk_streamer_receives_every_update_type_through_the_redirect(
    simulator: RunningSimulator, streamer: upstox_client.PortfolioDataStreamer
) -> None:
    opened = threading.Event()
    messages: list[str] = []
    errors: list[object] = []
    streamer.on("open", opened.set)
    streamer.on("message", messages.append)
    streamer.on("error", errors.append)
    streamer.connect()
    assert opened.wait(10), errors
    produced = simulator.control.step(400)["produced"]
    deadline = time.monotonic() + 10
    while len(messages) < produced and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not errors
    assert len(messages) == produced
    decoded = [json.loads(m) for m in messages]
    assert {m["update_type"] for m in decoded} == {"order", "position", "holding", "gtt_order"}
    counters = simulator.control.counters()
    assert counters["authorizations"] == 1  # the 302 path issued exactly one code
    assert counters["sent"] == produced
    # what the SDK got is exactly the ground truth's order histories, in order
    state = simulator.control.state()
    by_order: dict[str, list[dict[str, object]]] = {}
    for m in decoded:
        if m["update_type"] == "order":
            by_order.setdefault(str(m["order_id"]), []).append(m)
    assert by_order == {oid: o["history"] for oid, o in state["orders"].items()}
