"""The trigger -> operator event contract: round trips, the old stored shape, and what it refuses."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import msgspec
import pytest

from airflow_provider_upstox.exceptions import (
    InvalidUpdateError,
    UpstoxAPIError,
    UpstoxAuthenticationError,
    UpstoxRateLimitError,
    UpstoxStreamClosedError,
    UpstoxTransportError,
)
from airflow_provider_upstox.models.events import (
    MAX_MEMBERS_BYTES,
    MAX_MESSAGE_CHARS,
    BatchEvent,
    ErrorEvent,
    ErrorKind,
    EventStats,
    IdleEvent,
    InvalidEventError,
    StreamEvent,
    TokenWaitEvent,
    decode_event,
    encode_event,
    encode_group,
    group_members,
)
from airflow_provider_upstox.models.updates import Update, encode_updates
from tests.store.histories import BASE_RECEIVED_US, order_message

UPDATES = [
    Update(update_type="order", data={"order_id": "1", "status": "open", "quantity": 5}, seq=7,
           connection_epoch=2, received_at_us=1_740_641_185_000_000, account="AB1234"),
    Update(update_type="holding", data={"isin": "INE002A01018", "quantity": 3}, source="snapshot", seq=8,
           connection_epoch=2, received_at_us=1_740_641_184_000_000),
]  # fmt: skip
STATS = EventStats(
    connection=2, handoffs=1, messages=40, reconnects=1, decode_errors=0, pending=3, lag_ms=1.5
)


def through_json(event: StreamEvent) -> Any:
    """What a consumer gets back: Airflow stores the payload as JSON text."""
    return json.loads(json.dumps(encode_event(event)))


@pytest.mark.parametrize(
    "event",
    [
        BatchEvent(updates=UPDATES, account="AB1234", stats=STATS),
        BatchEvent(updates=[]),
        IdleEvent(idle_since_us=1_740_641_185_000_000, account="AB1234", stats=STATS),
        ErrorEvent(
            kind=ErrorKind.STREAM, exception="UpstoxStreamClosedError", message="closed", account=None
        ),
        TokenWaitEvent(
            refused_fingerprint="0123456789abcdef",
            since_us=1_740_641_185_000_000,
            probed_at_us=1_740_641_185_000_000,
            probes=2,
            message="refused",
            account="AB1234",
        ),
    ],
    ids=["batch", "empty-batch", "idle", "error", "token-wait"],
)
def test_every_event_round_trips_through_json(event: StreamEvent) -> None:
    assert decode_event(through_json(event)) == event


def test_wire_shape_is_small_and_tagged_by_status() -> None:
    batch = through_json(BatchEvent(updates=UPDATES, account="AB1234", stats=STATS))
    assert set(batch) == {"status", "account", "updates", "stats"}
    assert batch["status"] == "batch"
    assert batch["updates"] == json.loads(json.dumps(encode_updates(UPDATES)))  # arrays, no field names
    error = through_json(ErrorEvent(kind=ErrorKind.AUTHENTICATION, exception="X", message="m"))
    assert error == {"status": "error", "error_type": "authentication", "exception": "X", "message": "m",
                     "account": None}  # fmt: skip


def test_token_wait_event_is_small_and_names_the_episode() -> None:
    wait = TokenWaitEvent(refused_fingerprint="0123456789abcdef", since_us=5, probed_at_us=5)
    assert through_json(wait) == {"status": "token_wait", "refused_fingerprint": "0123456789abcdef",
                                  "since_us": 5, "probed_at_us": 5, "probes": 0, "message": "",
                                  "account": None}  # fmt: skip
    assert wait.episode == "0123456789abcdef@5"


def test_events_stored_by_earlier_versions_still_decode() -> None:
    """Asset events queued in the metadata DB before the upgrade: the same keys, plus ``fatal``."""
    wire_updates = json.loads(json.dumps(encode_updates(UPDATES)))
    old_batch = {"status": "batch", "account": "AB1234", "updates": wire_updates,
                 "stats": {"connection": 1, "handoffs": 0, "messages": 3, "reconnects": 0, "decode_errors": 0,
                           "pending": 0, "lag_ms": 2.0}}  # fmt: skip
    decoded = decode_event(old_batch)
    assert isinstance(decoded, BatchEvent)
    assert decoded.updates == UPDATES
    assert decoded.stats.lag_ms == 2.0
    old_error = {"status": "error", "error_type": "authentication", "exception": "UpstoxAuthenticationError",
                 "message": "token expired", "fatal": True, "account": None}  # fmt: skip
    error = decode_event(old_error)
    assert isinstance(error, ErrorEvent)
    assert (error.kind, error.fatal, error.message) == (ErrorKind.AUTHENTICATION, True, "token expired")
    bare = decode_event({"status": "batch", "account": "AB1234", "updates": []})  # no stats (tests, old)
    assert bare == BatchEvent(updates=[], account="AB1234")


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (None, "object"),
        ([], "object"),
        ({}, "status"),
        ({"status": "wakeup"}, "status"),
        ({"status": "batch"}, "updates"),
        ({"status": "batch", "updates": [["order", {"order_id": "1"}, "stream", "not a seq"]]}, "updates[0]"),
        ({"status": "batch", "updates": "x"}, "updates"),
        ({"status": "idle", "idle_since_us": "soon"}, "idle_since_us"),
        ({"status": "error", "error_type": "auth", "exception": "X", "message": "m"}, "error_type"),
        ({"status": "error", "error_type": "authentication", "message": "m"}, "exception"),
    ],
)
def test_foreign_or_damaged_payloads_raise_a_specific_error(payload: Any, where: str) -> None:
    with pytest.raises(InvalidEventError, match="not an Upstox portfolio stream event") as caught:
        decode_event(payload)
    assert where in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_error_kinds_are_exactly_what_is_sent_and_fatality_is_theirs() -> None:
    sent = {
        ErrorEvent.from_exception(exc, None).kind
        for exc in (
            UpstoxAuthenticationError("refused", status_code=401),
            UpstoxRateLimitError("slow down", status_code=429),
            UpstoxAPIError("bad", status_code=400),
            UpstoxTransportError("timeout"),
            UpstoxStreamClosedError("closed", code=1011, reason=""),
            ValueError("no token in the connection"),
            KeyError("upstox_default"),
        )
    }
    assert sent == set(ErrorKind)
    assert {k for k in ErrorKind if k.fatal} == {ErrorKind.AUTHENTICATION, ErrorKind.CONFIGURATION}
    assert ErrorKind.of(UpstoxRateLimitError("x")) is ErrorKind.API  # throttled: transient
    assert ErrorKind.of(InvalidUpdateError("x")) is ErrorKind.CONFIGURATION  # not a stream failure


def test_error_event_text_is_redacted_and_bounded() -> None:
    url = "wss://feed.example/portfolio?requestId=abc123secret&code=xyz987secret"
    event = ErrorEvent.from_exception(UpstoxStreamClosedError(f"lost {url} " + "x" * 2000), "AB1234")
    text = json.dumps(encode_event(event))
    assert "abc123secret" not in text
    assert "xyz987secret" not in text
    assert len(event.message) == MAX_MESSAGE_CHARS
    assert (event.exception, event.account, event.fatal) == ("UpstoxStreamClosedError", "AB1234", False)


def test_encoding_does_not_copy_update_data() -> None:
    payload = encode_event(BatchEvent(updates=UPDATES))
    assert payload["updates"][0][1] is UPDATES[0].data
    assert msgspec.json.decode(msgspec.json.encode(payload)) == json.loads(json.dumps(payload))


def test_group_event_members_travel_as_one_string() -> None:
    """Airflow parses and validates every nested value of an asset event's extra on each read: the
    members of a group event are one string, and both that and the nested list of earlier versions
    read back to the same member payloads."""
    update = Update(update_type="order", data={"order_id": "1", "status": "open"}, seq=1, received_at_us=2)
    members = [
        {**encode_event(BatchEvent(account="AB1234", updates=[update])), "conn_id": "c1"},
        {
            **encode_event(TokenWaitEvent(refused_fingerprint="f", since_us=1, probed_at_us=1, account="CD")),
            "conn_id": "c2",
        },
    ]
    payload = encode_group(members)
    assert set(payload) == {"status", "members_zlib"}
    assert isinstance(payload["members_zlib"], str)
    assert json.loads(json.dumps(payload)) == payload  # plain JSON for Airflow's JSON columns
    assert group_members(payload) == json.loads(json.dumps(members))
    # What earlier versions sent still reads: the members as one JSON string, or nested.
    as_json = json.loads(json.dumps(members))
    assert group_members({"status": "group", "members": json.dumps(members)}) == as_json
    assert group_members({"status": "group", "members": members}) == members
    assert group_members(encode_event(BatchEvent(account="AB1234", updates=[update]))) is None
    for bad in ("[1,", "{}", 7):
        with pytest.raises(InvalidEventError, match="group event"):
            group_members({"status": "group", "members": bad})


def _order(i: int) -> Update:
    """A whole order message (``tests.store.histories``), its identifying values varying by *i*."""
    data = order_message(
        f"2402210{i:08d}", user_id=f"AB{i:04d}", exchange_order_id=f"13000000{i * 7919:08d}",
        instrument_token=f"NSE_EQ|INE{i * 31:09d}", trading_symbol=f"SYM{i}-EQ", status="open",
        quantity=10 + i, filled_quantity=i % 3, price=92.95 + i / 20,
        transaction_type="BUY" if i % 2 else "SELL", order_timestamp=f"2024-02-21 14:{i % 60:02d}:02",
    )  # fmt: skip
    return Update(update_type="order", data=data, seq=i + 1, received_at_us=BASE_RECEIVED_US + i)


def test_a_group_event_is_a_fraction_of_its_members_json_and_refuses_what_it_did_not_send() -> None:
    """The triggerer logs every event whole: a group event must cost far fewer bytes than its JSON."""
    members = [
        {**encode_event(BatchEvent(account=f"AB{i:04d}", updates=[_order(i)])), "conn_id": f"c{i}"}
        for i in range(48)
    ]
    payload = encode_group(members)
    plain = len(json.dumps(members))
    assert len(json.dumps(payload)) * 4 < plain, (len(json.dumps(payload)), plain)
    assert group_members(payload) == json.loads(json.dumps(members))

    packed = payload["members_zlib"]
    bomb = base64.b64encode(zlib.compress(b" " * (MAX_MEMBERS_BYTES + 1), 9)).decode()
    not_json = base64.b64encode(zlib.compress(b"[1,")).decode()
    for bad, why in [
        (packed[:-8], "truncated|not base64"),
        ("not base64!", "not base64"),
        (base64.b64encode(b"plain bytes").decode(), "not base64 of zlib"),
        (bomb, "over"),
        (not_json, "not JSON"),
        (7, "not a string"),
    ]:
        with pytest.raises(InvalidEventError, match=why):
            group_members({"status": "group", "members_zlib": bad})
