"""The *Streams* view against a real ``airflow api-server``: health rows the operators persisted.

The api-server reads the store through the SQL connection named by ``UPSTOX_SQL_CONN_ID`` (a SQLite
file this test writes too), sends the health gauges to a StatsD socket the test listens on, and
serves the page and its JSON. One stream's health comes from a real trigger event (the trigger
against the simulator, persisted by the operator); a fleet in every state comes from the store's
API, as the operators of other accounts would have written it. Screenshots go to
``docs/screenshots/`` when UPSTOX_UPDATE_SCREENSHOTS=1, otherwise to a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_upstox.models.events import (
    BatchEvent,
    ErrorEvent,
    ErrorKind,
    EventStats,
    IdleEvent,
    TokenWaitEvent,
)
from airflow_provider_upstox.models.updates import Update, now_us
from airflow_provider_upstox.simulator import RunningSimulator
from airflow_provider_upstox.store import PortfolioStore, health
from tests.plugins.conftest import create_connection
from tests.ui.cdp import chromium_page, find_chromium

pytestmark = [pytest.mark.airflow_server, pytest.mark.timeout(300)]

SQL_CONN_ID = "upstox_health_db"
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("UPSTOX_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="upstox-screenshots-"))
)


class StatsdListener:
    """A UDP socket playing the StatsD server: every packet the api-server sends, as text lines."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            with contextlib.suppress(TimeoutError):
                self.lines.extend(self.sock.recv(65536).decode().splitlines())
        raise AssertionError(f"no metric {prefix!r} within {timeout} s; got {self.lines[-20:]}")


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.sock.close()


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('health') / 'store.db'}"


@pytest.fixture(scope="module")
def server(
    airflow_env: Any, store_url: str, statsd: StatsdListener, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    sql_conn = json.dumps({"conn_type": "sqlite", "host": store_url.removeprefix("sqlite:///")})
    env = {
        # A metadata DB of its own: the connections made here (the app of the token tests, user
        # AB1234, a simulator that is gone afterwards) would otherwise take later tests' notifier
        # deliveries, and the plugin would answer them 502.
        **airflow_env.private_metadata_db(tmp_path_factory.mktemp("streams-metadata")),
        "UPSTOX_SQL_CONN_ID": SQL_CONN_ID,
        f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}": sql_conn,
        "AIRFLOW__UPSTOX__HEALTH_METRICS_INTERVAL": "1",
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }
    with (
        airflow_env.api_server(log_name=f"api-server-streams-{int(time.time())}", extra_env=env) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
    ):
        yield http


@pytest.fixture
def local_sql_conn(store_url: str, monkeypatch: pytest.MonkeyPatch) -> PortfolioStore:
    """The same SQLite store for the operator in this process, as the same connection id."""
    sql_conn = json.dumps({"conn_type": "sqlite", "host": store_url.removeprefix("sqlite:///")})
    monkeypatch.setenv(f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}", sql_conn)
    store = PortfolioStore.from_url(store_url)
    store.migrate()
    return store


def _streams(http: httpx.Client, **params: Any) -> dict[str, Any]:
    answer = http.get("/upstox/api/streams", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def _first_event(conn_id: str) -> dict[str, Any]:
    """What the triggerer would hand the operator: the trigger's first event (the snapshot batch)."""
    from airflow_provider_upstox.triggers.handoff import registry
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger

    trigger = UpstoxPortfolioStreamTrigger(upstox_conn_id=conn_id, max_batch_wait=0.3, idle_timeout=20)
    try:
        async for event in trigger.run():
            return event.payload  # type: ignore[no-any-return]
    finally:
        lease = registry.take(trigger.handoff_key)
        if lease is not None:
            await lease.aclose()
    raise AssertionError("the trigger ended without an event")


def test_a_persisted_event_shows_on_the_page_without_the_token(
    server: httpx.Client,
    simulator: RunningSimulator,
    local_sql_conn: PortfolioStore,
    statsd: StatsdListener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_upstox.operators.portfolio_stream import UpstoxPortfolioStreamOperator

    conn_id = "upstox_live"
    create_connection(server, conn_id, simulator, simulator.token)  # what the page lists
    upstox = {"conn_type": "upstox", "password": simulator.token, "host": simulator.base_url}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(upstox))  # what this process streams
    before = _streams(server)
    assert {s["conn_id"]: s["health"] for s in before["streams"]}.get(conn_id) == "no stream"

    payload = asyncio.run(_first_event(conn_id))
    assert payload["status"] == "batch"
    assert payload["updates"]
    operator = UpstoxPortfolioStreamOperator(
        task_id="stream", upstox_conn_id=conn_id, sql_conn_id=SQL_CONN_ID, emit_assets=False,
        backfill_history=False,
    )  # fmt: skip
    ti = SimpleNamespace(dag_id="d", task_id="stream", run_id="r", map_index=-1)
    with pytest.raises(TaskDeferred):
        operator.execute_complete({"ti": ti, "outlet_events": {}}, payload)

    answer = _streams(server)
    row = {s["conn_id"]: s for s in answer["streams"]}[conn_id]
    user_id = httpx.get(f"{simulator.base_url}/_sim/state").json()["user_id"]
    assert (row["health"], row["state"], row["consumer"], row["account"]) == (
        "ok",
        "connected",
        "task",
        user_id,
    )
    assert row["connection_epoch"] == 1
    assert row["reconnects"] == 0
    assert row["last_event_age_s"] < 60
    assert row["token"]["valid_until"] > time.time() * 1000
    html = server.get("/upstox/streams").text
    assert f'data-conn-id="{conn_id}" data-health="ok"' in html
    assert simulator.token not in html
    assert simulator.token not in json.dumps(answer)

    # the api-server's reporter: per-connection gauges, tagged (StatsD with InfluxDB tags)
    line = statsd.wait_for(f"airflow.upstox.stream.health.connected,conn_id={conn_id},account={user_id}:", 30)
    assert line.endswith(":1|g")
    assert statsd.wait_for("airflow.upstox.stream.health.ok:", 30)


def _fleet(store: PortfolioStore) -> dict[str, str]:
    """Accounts in every state, as their operators would have recorded them; conn id -> expected health."""
    now = datetime.now(timezone.utc)

    def batch(account: str, lag_ms: float, reconnects: int, message_age_s: float) -> BatchEvent:
        received = now_us() - int(message_age_s * 1e6)
        update = Update(
            update_type="order", data={"order_id": "1", "status": "open"}, received_at_us=received
        )
        stats = EventStats(connection=reconnects + 1, messages=1200 + reconnects, reconnects=reconnects,
                           pending=2, lag_ms=lag_ms)  # fmt: skip
        return BatchEvent(updates=[update], account=account, stats=stats)

    idle = IdleEvent(idle_since_us=now_us(), account="EF9012", stats=EventStats(connection=1, messages=310))
    refused = TokenWaitEvent(
        refused_fingerprint="0f" * 8,
        since_us=now_us() - 3_600_000_000,
        probed_at_us=now_us(),
        account="LM1357",
    )
    error = ErrorEvent(
        kind=ErrorKind.TRANSPORT, exception="UpstoxTransportError", message="timed out", account="NP2468"
    )
    fleet: list[tuple[str, Any, timedelta, str]] = [
        ("upstox_desk_01", batch("AB1234", 35.0, 0, 2), timedelta(seconds=2), "ok"),
        ("upstox_desk_02", batch("CD5678", 48.0, 1, 4), timedelta(seconds=4), "ok"),
        ("upstox_desk_03", idle, timedelta(seconds=20), "ok"),
        ("upstox_desk_04", batch("GH3456", 8400.0, 3, 9), timedelta(seconds=9), "lagging"),
        ("upstox_desk_05", batch("JK7890", 40.0, 0, 1900), timedelta(minutes=31), "stale"),
        ("upstox_desk_06", refused, timedelta(minutes=2), "token refused"),
        ("upstox_desk_07", error, timedelta(seconds=40), "error"),
        ("upstox_desk_09", batch("QR1122", 22.0, 2, 1), timedelta(seconds=1), "ok"),
        ("upstox_desk_10", batch("ST3344", 61.0, 0, 3), timedelta(seconds=3), "ok"),
        ("upstox_desk_11", batch("UV5566", 30.0, 1, 7300), timedelta(hours=2, minutes=1), "stopped"),
    ]
    store.record_stream_health(
        [
            health.from_event(c, e, health.WATCHER if i % 2 else health.TASK, now - ago)
            for i, (c, e, ago, _) in enumerate(fleet)
        ]
    )
    # the stopped one: its task ended on stop_at two hours ago
    store.record_stream_health([health.stopped("upstox_desk_11", health.TASK, now - timedelta(hours=2))])
    # the stale and the stopped one recorded their last event long ago (last_event_at: time of recording)
    from sqlalchemy import update

    from airflow_provider_upstox.store import schema

    with store.engine.begin() as conn:
        t = schema.stream_health
        for conn_id, ago in (("upstox_desk_05", fleet[4][2]), ("upstox_desk_11", timedelta(hours=2))):
            conn.execute(update(t).where(t.c.conn_id == conn_id).values(last_event_at=now - ago))
    expected = {c: label for c, _, _, label in fleet}
    expected["upstox_desk_08"] = "no stream"  # a connection that never streamed
    return expected


def test_fleet_worst_first_escaped_paged_and_in_chromium(
    server: httpx.Client, simulator: RunningSimulator, local_sql_conn: PortfolioStore
) -> None:
    expected = _fleet(local_sql_conn)
    tokens = {}
    for i, conn_id in enumerate(sorted(expected)):
        if conn_id == "upstox_desk_07":
            continue  # its connection was deleted: the health row still shows
        tokens[conn_id] = f"secret-token-{i}-" + "t" * 24
        create_connection(server, conn_id, simulator, tokens[conn_id], user_id=f"U{i}")

    answer = _streams(server)
    rows = [s for s in answer["streams"] if s["conn_id"] in expected]
    got = {s["conn_id"]: s["health"] for s in rows}
    assert got == expected
    order = [health.rank(s["health"]) for s in answer["streams"]]
    assert order == sorted(order)  # worst first
    assert answer["summary"]["error"] >= 1
    assert answer["summary"]["stale"] >= 1
    assert {s["conn_id"]: s for s in rows}["upstox_desk_07"]["token"] is None

    problems = _streams(server, only="problems", limit=2)
    assert len(problems["streams"]) == 2
    assert problems["total"] >= 5
    assert all(s["health"] not in health.FINE for s in problems["streams"])

    html = server.get("/upstox/streams").text
    assert "timed out" not in html  # the kind, never the error's text
    for token in tokens.values():
        assert token not in html
        assert token not in json.dumps(answer)

    browser = find_chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (CI must `apt-get install -y chromium`)")
        pytest.skip("chromium is not installed")
    base_url = str(server.base_url).rstrip("/")
    with chromium_page(browser, width=1500, height=900) as page:
        page.navigate(f"{base_url}/upstox/streams")
        page.wait_for("document.querySelectorAll('tr[data-conn-id]').length >= 12", 60)
        first = page.evaluate("document.querySelector('tr[data-conn-id]').dataset.health")
        assert first == "error"
        assert "NP2468" in page.body_text()
        assert not any(t in page.evaluate("document.documentElement.outerHTML") for t in tokens.values())
        page.screenshot(SCREENSHOTS / "upstox-streams-page.png")
        # inside Airflow's UI: the nav entry (Browse > Upstox streams) shows the page in a frame
        page.navigate(f"{base_url}/plugin/upstox-streams")
        page.wait_for(
            "(() => { const f = document.querySelector('iframe');"
            " return !!(f && f.contentDocument && f.contentDocument.querySelector('tr[data-conn-id]')) })()",
            90,
        )
        page.screenshot(SCREENSHOTS / "upstox-streams-in-airflow.png")
