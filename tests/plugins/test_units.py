"""Pure parts of the plugin: registration, signed OAuth states, notifier payload checks, rate limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from airflow_provider_upstox.plugins import keys, notifier

KEY = b"k" * 32


def test_entry_point_and_nav_entry() -> None:
    (ep,) = [e for e in entry_points(group="airflow.plugins") if e.name == "upstox_tokens"]
    plugin = ep.load()
    assert plugin.name == "upstox_tokens"
    tokens, streams = plugin.external_views
    assert (tokens["href"], tokens["url_route"]) == ("/upstox/tokens", "upstox-tokens")
    assert (streams["href"], streams["url_route"]) == ("/upstox/streams", "upstox-streams")
    assert plugin.fastapi_apps == []  # not an API server: no app, no API-server imports


def test_app_is_built_in_the_api_server() -> None:
    code = (
        "import json, sys; from airflow_provider_upstox.plugins.upstox_tokens import UpstoxTokenPlugin as P;"
        "print(json.dumps([a['url_prefix'] for a in P.fastapi_apps]))"
    )
    env = {**os.environ, "UPSTOX_TOKEN_PLUGIN_APP": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["/upstox"]


class TestOAuthState:
    def test_round_trip_binds_connection_and_user(self) -> None:
        state = keys.make_state("upstox_a", "alice", key=KEY)
        read = keys.read_state(state, key=KEY)
        assert (read.conn_id, read.user) == ("upstox_a", "alice")
        assert abs(read.issued_at - time.time() * 1000) < 5000

    def test_two_states_differ(self) -> None:
        assert keys.make_state("c", "u", key=KEY) != keys.make_state("c", "u", key=KEY)

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda s: s[:-2] + ("AA" if not s.endswith("AA") else "BB"),  # MAC
            lambda s: s.replace(s.split(".")[1], "Ym9i", 1),  # another user
            lambda s: "x" + s,  # another connection
            lambda s: "a.b",
            lambda s: "",
        ],
    )
    def test_forged_states_are_refused(self, mangle) -> None:
        with pytest.raises(ValueError, match="login state"):
            keys.read_state(mangle(keys.make_state("upstox_a", "alice", key=KEY)), key=KEY)

    def test_another_key_refuses(self) -> None:
        with pytest.raises(ValueError, match="signature"):
            keys.read_state(keys.make_state("c", "u", key=KEY), key=b"other" * 8)

    def test_expired(self) -> None:
        old = keys.make_state("c", "u", key=KEY, now=time.time() - keys.STATE_TTL - 1)
        with pytest.raises(ValueError, match="expired"):
            keys.read_state(old, key=KEY)

    def test_notifier_key(self) -> None:
        key = keys.notifier_key(KEY)
        assert len(key) == 32
        assert keys.notifier_key_matches(key, KEY)
        assert not keys.notifier_key_matches(key[:-1] + "x", KEY)
        assert keys.notifier_key(b"other" * 8) != key


def _payload(**changes: object) -> dict[str, object]:
    now = int(time.time() * 1000)
    base = {
        "client_id": "app",
        "user_id": "AB1234",
        "access_token": "tok-" + "t" * 20,
        "token_type": "Bearer",
        "expires_at": str(now + 3_600_000),
        "issued_at": now,
        "message_type": "access_token",
    }
    return {**base, **changes}


class TestParseDelivery:
    def test_documented_payload(self) -> None:
        delivery = notifier.parse_delivery(_payload())
        assert (delivery.client_id, delivery.user_id) == ("app", "AB1234")
        assert "tok-" not in repr(delivery)

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"message_type": "order"}, "message_type"),
            ({"token_type": "MAC"}, "token_type"),
            ({"client_id": ""}, "client_id"),
            ({"user_id": 5}, "user_id"),
            ({"access_token": None}, "access_token"),
            ({"access_token": "x" * 5000}, "access_token"),
            ({"issued_at": "soon"}, "issued_at"),
            ({"issued_at": True}, "issued_at"),
            ({"issued_at": str(int(time.time() * 1000) + 3_600_000)}, "future"),
            ({"expires_at": "1000"}, "expired"),
        ],
    )
    def test_refusals(self, changes: dict[str, object], message: str) -> None:
        with pytest.raises(notifier.Rejected, match=message) as info:
            notifier.parse_delivery(_payload(**changes))
        assert info.value.status == 422
        assert "tok-" not in info.value.message

    def test_not_an_object(self) -> None:
        with pytest.raises(notifier.Rejected, match="JSON object"):
            notifier.parse_delivery(["x"])


def test_token_bucket_limits_bursts_and_refills() -> None:
    bucket = notifier.TokenBucket(capacity=3, rate=50.0)
    assert [bucket.take() for _ in range(5)] == [True, True, True, False, False]
    time.sleep(0.05)
    assert bucket.take()


async def test_postbacks_spooled_before_a_restart_are_drained_when_the_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API server that stopped while the store was down left postbacks in its spool: the next
    start drains them, without waiting for another postback to arrive. The app's lifespan is
    entered the way Airflow's API server enters every mounted plugin app's."""
    import asyncio

    from airflow_provider_upstox import postbacks
    from airflow_provider_upstox.plugins.app import create_app
    from airflow_provider_upstox.store import PortfolioStore
    from tests.store.histories import order_message

    spool_file = tmp_path / "spool.sqlite"
    db_file = tmp_path / "store.sqlite"
    monkeypatch.setenv("AIRFLOW__UPSTOX__POSTBACK_SPOOL", str(spool_file))
    monkeypatch.setenv(
        "AIRFLOW_CONN_UPSTOX_SPOOL_STORE", json.dumps({"conn_type": "sqlite", "host": str(db_file)})
    )
    spool = postbacks.PostbackSpool(spool_file)
    for order_id in ("240221000000001", "240221000000002"):
        spool.put("upstox_spool_store", "AB1234", postbacks.parse_postback(order_message(order_id), "AB1234"))
    assert spool.count() == 2

    app = create_app()
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 30
        while spool.count() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert spool.count() == 0
    store = PortfolioStore.from_url(f"sqlite:///{db_file}")
    try:
        orders = store.read_state("AB1234")["order"]
    finally:
        store.engine.dispose()
    assert set(orders) == {"240221000000001", "240221000000002"}
    assert {row["source"] for row in orders.values()} == {"postback"}
