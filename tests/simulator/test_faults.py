"""Every fault switch does what it says, observed from a real client over loopback."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from airflow_provider_upstox.simulator import RunningSimulator
from tests.simulator.conftest import (
    AUTHORIZE,
    auth_headers,
    authorize,
    open_stream,
    recv_json,
    recv_until_quiet,
    rest,
)

pytestmark = pytest.mark.simulator(scenario="quiet", seed=3)


async def _read_until_closed(ws: object, timeout: float = 5.0) -> tuple[list[str], ConnectionClosed]:
    frames: list[str] = []
    while True:
        try:
            frames.append(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[attr-defined]
        except ConnectionClosed as exc:
            return frames, exc


# ---------------------------------------------------------------- drops


@pytest.mark.parametrize("code", [1000, 1001, 1011])
async def test_drop_every_n_messages_with_close_code(simulator: RunningSimulator, code: int) -> None:
    await simulator.acontrol.drop_every(7, mode=code)
    async with open_stream(authorize(simulator)) as ws:
        await simulator.acontrol.step(100)
        frames, exc = await _read_until_closed(ws)
    assert len(frames) == 7
    assert exc.rcvd is not None
    assert exc.rcvd.code == code
    counters = await simulator.acontrol.counters()
    assert counters["dropped_connections"] == 1
    assert counters["lost_on_disconnect"] > 0


async def test_drop_with_tcp_reset_sends_no_close_frame(simulator: RunningSimulator) -> None:
    await simulator.acontrol.drop_every(3, mode="reset")
    async with open_stream(authorize(simulator)) as ws:
        await simulator.acontrol.step(50)
        frames, exc = await _read_until_closed(ws)
    assert isinstance(exc, ConnectionClosedError)
    assert exc.rcvd is None  # abrupt: no close frame
    assert len(frames) <= 3


async def test_drop_probability_one_drops_after_first_message(simulator: RunningSimulator) -> None:
    await simulator.acontrol.drop_probability(1.0, mode=1001)
    async with open_stream(authorize(simulator)) as ws:
        await simulator.acontrol.step(30)
        frames, exc = await _read_until_closed(ws)
    assert len(frames) == 1
    assert exc.rcvd is not None
    assert exc.rcvd.code == 1001


async def test_disconnect_now(simulator: RunningSimulator) -> None:
    async with open_stream(authorize(simulator)) as ws:
        assert (await simulator.acontrol.disconnect(1011))["dropped"] == 1
        _, exc = await _read_until_closed(ws)
    assert exc.rcvd is not None
    assert exc.rcvd.code == 1011


# ---------------------------------------------------------------- silence and pings


@pytest.mark.simulator(scenario="quiet", ping_interval=0.2)
async def test_server_pings_when_idle_and_stop_pings_silences_them(simulator: RunningSimulator) -> None:
    async with open_stream(authorize(simulator)):
        await asyncio.sleep(1.0)
        pings = (await simulator.acontrol.counters())["pings_sent"]
        assert pings >= 2
        await simulator.acontrol.stop_pings()
        await asyncio.sleep(0.3)
        stopped_at = (await simulator.acontrol.counters())["pings_sent"]
        await asyncio.sleep(1.0)
        assert (await simulator.acontrol.counters())["pings_sent"] == stopped_at


@pytest.mark.simulator(scenario="quiet", ping_interval=0.2, ping_timeout=0.5)
async def test_client_that_does_not_pong_is_closed_1011(simulator: RunningSimulator) -> None:
    async with open_stream(authorize(simulator), ping_interval=None) as ws:
        ws.transport.pause_reading()  # we never see the ping, so we never answer it
        await asyncio.sleep(1.5)
        ws.transport.resume_reading()
        _, exc = await _read_until_closed(ws)
    assert exc.rcvd is not None
    assert exc.rcvd.code == 1011


@pytest.mark.simulator(scenario="quiet", ping_interval=0.2)
async def test_hang_sends_nothing_and_answers_no_ping(simulator: RunningSimulator) -> None:
    async with open_stream(authorize(simulator), ping_interval=None) as ws:
        await simulator.acontrol.hang()
        before = (await simulator.acontrol.counters())["pings_sent"]
        await simulator.acontrol.step(40)
        assert await recv_until_quiet(ws, quiet=0.8) == []
        pong = await ws.ping()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(pong), 0.8)
        counters = await simulator.acontrol.counters()
        assert counters["pings_sent"] == before
        assert counters["lost_in_hang"] > 0
        await simulator.acontrol.hang(False)  # the peer comes back to life
        await asyncio.wait_for(pong, 2)
        await simulator.acontrol.step(40)
        assert await recv_until_quiet(ws)


# ---------------------------------------------------------------- order and timing


async def test_duplicates(simulator: RunningSimulator) -> None:
    await simulator.acontrol.duplicate(1.0)
    async with open_stream(authorize(simulator)) as ws:
        produced = (await simulator.acontrol.step(20))["produced"]
        frames = [m for m in await recv_until_quiet(ws)]
    assert len(frames) == 2 * produced
    assert frames[0::2] == frames[1::2]
    assert (await simulator.acontrol.counters())["duplicated"] == produced


async def test_reorder_window(simulator: RunningSimulator) -> None:
    await simulator.acontrol.reorder(5)
    async with open_stream(authorize(simulator)) as ws:
        await simulator.acontrol.step(60)
        got = await recv_until_quiet(ws)
    state = await simulator.acontrol.state()
    truth = [m for o in state["orders"].values() for m in o["history"]]
    got_orders = [m for m in got if m["update_type"] == "order"]
    assert sorted(map(json.dumps, got_orders)) == sorted(map(json.dumps, truth))  # nothing lost or added
    assert state["counters"]["reordered"] > 0
    per_order_sent = {}
    for m in got_orders:
        per_order_sent.setdefault(m["order_id"], []).append(m)
    assert any(per_order_sent[oid] != o["history"] for oid, o in state["orders"].items())


async def test_delay(simulator: RunningSimulator) -> None:
    await simulator.acontrol.delay(0.6)
    async with open_stream(authorize(simulator)) as ws:
        start = time.monotonic()
        await simulator.acontrol.step(3)
        await recv_json(ws, 1, timeout=3)
        assert time.monotonic() - start >= 0.55


# ---------------------------------------------------------------- bad frames


async def test_malformed_and_unknown_type_frames(simulator: RunningSimulator) -> None:
    await simulator.acontrol.set_faults(malformed_every=4, unknown_type_every=5)
    async with open_stream(authorize(simulator)) as ws:
        produced = (await simulator.acontrol.step(20))["produced"]
        frames = []
        while True:
            try:
                frames.append(await asyncio.wait_for(ws.recv(), 0.5))
            except asyncio.TimeoutError:
                break
    bad, unknown = 0, 0
    for frame in frames:
        try:
            m = json.loads(frame)
        except ValueError:
            bad += 1
            continue
        unknown += m["update_type"] not in ("order", "position", "holding", "gtt_order")
    assert bad == produced // 4
    assert unknown == produced // 5
    assert len(frames) == produced + bad + unknown


async def test_oversized_frames(simulator: RunningSimulator) -> None:
    await simulator.acontrol.oversized_every(2, size=1_500_000)
    async with open_stream(authorize(simulator), max_size=None) as ws:
        await simulator.acontrol.step(5)
        sizes = [len(f) for f in [await asyncio.wait_for(ws.recv(), 3) for _ in range(3)]]
    assert sizes[0] < 2000 < 1_400_000 < sizes[2]
    # a client with websockets' default 1 MiB limit is closed with 1009 (message too big)
    async with open_stream(authorize(simulator)) as ws:
        await simulator.acontrol.step(20)
        _, exc = await _read_until_closed(ws)
    assert exc.sent is not None
    assert exc.sent.code == 1009


# ---------------------------------------------------------------- HTTP faults


@pytest.mark.parametrize("status", [401, 403, 429, 500, 503])
def test_authorize_fails_n_times(simulator: RunningSimulator, status: int) -> None:
    simulator.control.fail_authorize(status, count=2)
    for _ in range(2):
        r = httpx.get(simulator.base_url + AUTHORIZE, headers=auth_headers(simulator), trust_env=False)
        assert r.status_code == status
        assert r.json()["status"] == "error"
        assert "Retry-After" not in r.headers
    assert authorize(simulator)
    assert simulator.control.counters()["injected_http_errors"] == 2


def test_429_with_retry_after_and_udapi10005(simulator: RunningSimulator) -> None:
    simulator.control.fail_authorize(429, count=1, retry_after=2)
    r = httpx.get(
        simulator.ws_direct_url().replace("ws://", "http://"),
        headers=auth_headers(simulator),
        trust_env=False,
    )
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    assert r.json()["errors"][0]["error_code"] == "UDAPI10005"


def test_rest_fails_n_times_then_recovers(simulator: RunningSimulator) -> None:
    simulator.control.fail_rest(503, count=2)
    assert [rest(simulator, "/v2/user/profile").status_code for _ in range(3)] == [503, 503, 200]


def test_slow_responses(simulator: RunningSimulator) -> None:
    simulator.control.slow_responses(0.4)
    start = time.monotonic()
    assert rest(simulator, "/v2/user/profile").status_code == 200
    assert time.monotonic() - start >= 0.4


async def test_refuse_handshakes(simulator: RunningSimulator) -> None:
    await simulator.acontrol.refuse_handshakes(1)
    url = authorize(simulator)
    with pytest.raises(InvalidStatus) as excinfo:
        async with open_stream(url):
            pass
    assert excinfo.value.response.status_code == 500


async def test_token_expiry_closes_sockets_and_refuses_everything(simulator: RunningSimulator) -> None:
    async with open_stream(authorize(simulator)) as ws:
        await simulator.acontrol.expire_token(time.time() + 0.5)
        assert rest(simulator, "/v2/user/profile").status_code == 200  # not yet
        _, exc = await _read_until_closed(ws, timeout=5)
    assert exc.rcvd is not None
    assert exc.rcvd.code == 1008
    for r in (rest(simulator, "/v2/user/profile"), rest(simulator, AUTHORIZE)):
        assert r.status_code == 401
        assert r.json()["errors"][0]["error_code"] == "UDAPI100050"


def test_fault_switch_validation_and_reset(simulator: RunningSimulator) -> None:
    r = httpx.post(simulator.base_url + "/_sim/faults", params={"no_such_switch": "1"}, trust_env=False)
    assert r.status_code == 400
    assert "no_such_switch" in r.text
    simulator.control.set_faults(drop_every=3, delay=0.5)
    assert simulator.control.set_faults(drop_every=None)["drop_every"] == 0
    assert simulator.control.clear_faults()["delay"] == 0.0
