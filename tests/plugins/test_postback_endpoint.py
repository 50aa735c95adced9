"""The postback endpoint of the plugin in a real ``airflow api-server``, fed by the simulator.

The simulator POSTs every order update to the connection's postback URL (duplicated and out of
order), while the store's database is "down" (its directory does not exist yet): every postback is
answered 200 at once and spooled, and once the database is back every state is in the store exactly
once, marked ``postback``. Forged postbacks get a clear 4xx and change nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from airflow_provider_upstox.plugins.postback import postback_key
from airflow_provider_upstox.simulator import RunningSimulator
from airflow_provider_upstox.store import PortfolioStore, history, schema
from tests.plugins.conftest import PluginServer
from tests.store.histories import order_message

pytestmark = [
    pytest.mark.airflow_server,
    pytest.mark.timeout(300),
    pytest.mark.simulator(scenario="quiet", seed=5),
]

CONN_ID = "upstox_postbacks"
STORE_CONN_ID = "upstox_postback_store"


def _setup(plugin_server: PluginServer, sim: RunningSimulator, db_file: Path) -> str:
    plugin_server.add_connection(CONN_ID, sim, sim.token, postback_sql_conn_id=STORE_CONN_ID)
    plugin_server.http.delete(f"/api/v2/connections/{STORE_CONN_ID}")
    body = {"connection_id": STORE_CONN_ID, "conn_type": "sqlite", "host": str(db_file)}
    assert plugin_server.http.post("/api/v2/connections", json=body).status_code == 201
    plugin_server.created.append(STORE_CONN_ID)
    url = f"{plugin_server.base_url}/upstox/postback/{postback_key(CONN_ID)}"
    assert plugin_server.state(CONN_ID)["postback_url"] == url  # what the user registers at Upstox
    return url


def _post(url: str, body: Any, content_type: str = "application/json") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"Content-Type": content_type}, timeout=30)


def _events(db_file: Path) -> list[tuple[str, str, str]]:
    if not db_file.exists():
        return []
    store = PortfolioStore.from_url(f"sqlite:///{db_file}")
    ev = schema.order_events
    try:
        with store.engine.connect() as conn:
            if not sa.inspect(conn).has_table(ev.name):
                return []
            return [tuple(r) for r in conn.execute(sa.select(ev.c.order_id, ev.c.state_id, ev.c.source))]  # type: ignore[misc]
    finally:
        store.engine.dispose()


def test_postbacks_reach_the_store_once_even_while_the_database_is_down(
    plugin_server: PluginServer, simulator: RunningSimulator, tmp_path: Path
) -> None:
    db_file = tmp_path / "later" / "store.sqlite"  # the directory is missing: the store is down
    url = _setup(plugin_server, simulator, db_file)
    settings = {"url": url, "duplicate_probability": 0.3, "reorder_window": 5}
    answer = httpx.post(
        f"{simulator.base_url}/_sim/postbacks", params={k: json.dumps(v) for k, v in settings.items()}
    )
    assert answer.status_code == 200, answer.text
    simulator.control.step(60)
    sent = httpx.post(f"{simulator.base_url}/_sim/postbacks", params={"drain": "30"}).json()["counters"]
    assert sent["delivered"] == sent["offered"] + sent["duplicated"] > 0  # every one answered 2xx
    assert _events(db_file) == []
    db_file.parent.mkdir()  # the database is back
    truth = simulator.control.state()["orders"]
    now = time.time()
    from datetime import datetime, timezone

    from airflow_provider_upstox.models.updates import Update, now_us

    def state_id(data: dict[str, Any]) -> str | None:
        update = Update(update_type="order", data=data, seq=1, received_at_us=now_us(), account="AB1234")
        return history.state_id_of(update, "AB1234", datetime.now(timezone.utc))

    expected = {(oid, state_id(h)) for oid, o in truth.items() for h in o["history"]}
    deadline = now + 90
    while time.time() < deadline:
        got = _events(db_file)
        if len(got) >= len(expected):
            break
        time.sleep(1)
    got = _events(db_file)
    assert {(o, s) for o, s, _ in got} == expected
    assert len(got) == len(expected)  # each state once
    assert {src for _, _, src in got} == {"postback"}


def test_forged_postbacks_change_nothing(
    plugin_server: PluginServer, simulator: RunningSimulator, tmp_path: Path
) -> None:
    db_file = tmp_path / "store.sqlite"
    url = _setup(plugin_server, simulator, db_file)
    valid = order_message("240221000000001")
    cases = [
        ("wrong key", 404, _post(url[:-4] + "AAAA", valid)),
        ("another user's order", 422, _post(url, order_message("240221000000002", user_id="ZZ9999"))),
        ("a position", 422, _post(url, {"update_type": "position", "instrument_token": "x", "product": "D"})),
        ("no user", 422, _post(url, {k: v for k, v in valid.items() if k != "user_id"})),
        ("bad status", 422, _post(url, order_message("240221000000003", status=7))),
        ("not an object", 422, _post(url, [1, 2])),
        ("malformed JSON", 400, _post(url, b'{"order_id": ')),
        ("wrong content type", 415, _post(url, valid, "text/plain")),
        ("1 MB body", 413, _post(url, b"{" + b" " * 2**20 + b"}")),
    ]
    for name, expected, answer in cases:
        assert answer.status_code == expected, (name, answer.status_code, answer.text)
        assert answer.json()["status"] == "error", name
    time.sleep(2)
    assert _events(db_file) == []


def test_bursts_are_rate_limited_and_change_nothing(
    plugin_server: PluginServer, simulator: RunningSimulator, tmp_path: Path
) -> None:
    db_file = tmp_path / "store.sqlite"
    url = _setup(plugin_server, simulator, db_file)
    body = json.dumps(order_message("240221000000009")).encode()

    async def burst(target: str, count: int) -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as client:
            answers = await asyncio.gather(
                *(
                    client.post(target, content=body, headers={"Content-Type": "application/json"})
                    for _ in range(count)
                )
            )
        return [a.status_code for a in answers]

    guessed = asyncio.run(burst(url[:-6] + "guess1", 300))  # someone guessing keys
    assert set(guessed) <= {404, 429}
    assert guessed.count(429) > 0
    replayed = asyncio.run(burst(url, 800))  # one real postback, replayed 800 times
    assert set(replayed) <= {200, 429}
    assert replayed.count(429) > 0
    deadline = time.time() + 60
    while time.time() < deadline and not _events(db_file):
        time.sleep(1)
    time.sleep(2)
    assert len(_events(db_file)) == 1  # whatever got through is one state, stored once
