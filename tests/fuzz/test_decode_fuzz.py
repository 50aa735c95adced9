"""Fuzzing the stream decoder: random and mutated frames never crash it, and every bad frame is counted.

Three layers, cheapest first:

* ``decode_frame`` on arbitrary bytes/text: it returns an :class:`Update` or raises
  :class:`FrameDecodeError`, nothing else, and the error text never repeats the frame (a frame may
  carry account data).
* ``decode_frame`` on *mutated* realistic frames, checked against an independent oracle
  (``json.loads`` in strict mode): whatever the oracle reads as an object with a non-empty string
  ``update_type`` must decode, with the same data minus the deprecated keys.
* The whole :class:`PortfolioStreamClient` against a real loopback WebSocket server sending a random
  mix of good and bad frames: the stream keeps going, ``stats.decode_errors`` equals the number of
  bad frames sent, and every good frame comes out, in order.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_upstox.models.updates import DEPRECATED_KEYS, Update
from airflow_provider_upstox.stream import FrameDecodeError, PortfolioStreamClient, decode_frame, no_delays
from tests.stream.feed_server import feed_server, send_then

pytestmark = pytest.mark.timeout(240)

MARKER = "SECRETMARK7f3a9"  # planted in frames: must never show up in an error text

SAMPLES: list[dict[str, Any]] = [
    {"update_type": "order", "user_id": "AB1234", "userId": "AB1234", "order_id": "240221025997024",
     "status": "open", "tradingsymbol": "NHPC-EQ", "trading_symbol": "NHPC-EQ", "filled_quantity": 0,
     "quantity": 1, "tag": MARKER, "exchange_timestamp": None, "order_timestamp": "2024-02-21 14:40:02"},
    {"update_type": "position", "instrument_token": "NSE_EQ|INE848E01016", "product": "D", "quantity": 2,
     "buy_price": 92.925, "day_buy_value": 185.85, "exchange": "NSE_EQ"},
    {"update_type": "holding", "isin": "INE848E01016", "quantity": 3, "company_name": "NHPC LTD " + MARKER,
     "haircut": 0.21},
    {"update_type": "gtt_order", "gtt_order_id": "GTT-CU25270200024002", "type": "MULTIPLE",
     "expires_at": 1772216999000000, "rules": [{"strategy": "ENTRY", "status": "FAILED", "message": MARKER}]},
    {"update_type": "brand_new_kind", "whatever": [1, 2, {"x": None}], "note": "unknown types are kept"},
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _oracle(frame: bytes | str) -> dict[str, Any] | None:
    """What a strict JSON reader makes of *frame*: the object if it is a valid update, else ``None``."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        obj = json.loads(frame, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    update_type = obj.get("update_type")
    return obj if isinstance(update_type, str) and update_type else None


def _decode(frame: bytes | str) -> Update | FrameDecodeError:
    try:
        return decode_frame(frame, connection_epoch=1, received_at_us=1, account="AB1234")
    except FrameDecodeError as exc:
        return exc


def _check(frame: bytes | str, result: Update | FrameDecodeError) -> None:
    if isinstance(result, FrameDecodeError):
        assert MARKER not in str(result), "a decode error repeats the frame's content"
        return
    assert isinstance(result.update_type, str)
    assert result.update_type
    assert result.data["update_type"] == result.update_type
    assert DEPRECATED_KEYS.isdisjoint(result.data)


@settings(max_examples=400, deadline=None)
@given(frame=st.binary(max_size=600) | st.text(max_size=300))
def test_arbitrary_frames_decode_or_raise_frame_decode_error(frame: bytes | str) -> None:
    _check(frame, _decode(frame))


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes | str:
    """A realistic frame with one to three mutations at the JSON or at the byte level."""
    obj: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(SAMPLES))))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["set", "delete", "retype_update_type", "wrap"]))
        if kind == "set":
            key = draw(st.sampled_from([*obj, "update_type", "extra_field"]))
            obj[key] = draw(json_values)
        elif kind == "delete" and obj:
            obj.pop(draw(st.sampled_from(sorted(obj))))
        elif kind == "retype_update_type":
            obj["update_type"] = draw(st.sampled_from(["", 0, None, [], {"a": 1}, "order", "ORDER", "é"]))
        elif kind == "wrap":
            obj = {"data": obj} if draw(st.booleans()) else obj
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    raw = bytearray(text.encode())
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["none", "truncate", "flip", "insert", "delete"]))
        if not raw or op == "none":
            continue
        pos = draw(st.integers(0, len(raw) - 1))
        if op == "truncate":
            del raw[pos:]
        elif op == "flip":
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        else:
            del raw[pos]
    as_text = draw(st.booleans())
    if as_text:
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            pass
    return bytes(raw)


@settings(max_examples=600, deadline=None)
@given(frame=mutated_frames())
def test_mutated_frames_agree_with_a_strict_json_oracle(frame: bytes | str) -> None:
    result = _decode(frame)
    _check(frame, result)
    expected = _oracle(frame)
    if expected is None:
        # msgspec may be laxer than the oracle only in ways that still give a valid update
        return
    if _has_huge_int(expected):
        return  # msgspec reads integers beyond 64 bits as floats or refuses them; both are fine
    assert isinstance(result, Update), f"a valid update frame was refused: {result}"
    assert result.data == {k: v for k, v in expected.items() if k not in DEPRECATED_KEYS}


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_huge_int(v) for v in value)
    if isinstance(value, dict):
        return any(_has_huge_int(v) for v in value.values())
    return False


# ----------------------------------------------------------------------------- the whole client

good_frames = st.sampled_from(SAMPLES).map(lambda o: json.dumps(o))
bad_frames = st.one_of(
    st.just("not json"),
    st.just("[1, 2, 3]"),
    st.just('"a string"'),
    st.just("{}"),
    st.just('{"update_type": 5}'),
    st.just('{"update_type": ""}'),
    st.just('{"update_type": "order", "order_id": '),
    st.binary(min_size=1, max_size=50).filter(
        lambda b: _oracle(b) is None and isinstance(_decode(b), Exception)
    ),
    st.text(min_size=1, max_size=50).filter(lambda s: isinstance(_decode(s), Exception)),
)


async def _no_snapshot(update_type: str) -> list[dict[str, Any]]:
    return []


async def _run_stream(frames: list[str | bytes]) -> tuple[list[Update], Any]:
    async with feed_server(send_then(frames)) as server:
        client = PortfolioStreamClient(
            server.authorize,
            _no_snapshot,
            ["order"],
            reconnect_delays=no_delays,
            min_reconnect_delay=0.01,
            snapshot_on_connect=False,
        )
        wanted = sum(1 for f in frames if not isinstance(_decode(f), Exception))
        out: list[Update] = []
        client.start()
        try:
            async with asyncio.timeout(10):
                while len(out) < wanted:
                    out.extend(await client.next_batch(500, 0.01, timeout=5))
                # the bad frames after the last good one are read too
                while client.stats.messages + client.stats.decode_errors < len(frames):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
        finally:
            await client.aclose()
        return out, client.stats


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(frames=st.lists(st.one_of(good_frames, bad_frames), min_size=1, max_size=40))
def test_stream_client_counts_every_bad_frame_and_keeps_every_good_one(frames: list[str | bytes]) -> None:
    out, stats = asyncio.run(_run_stream(frames))
    good = [f for f in frames if not isinstance(_decode(f), Exception)]
    assert stats.decode_errors == len(frames) - len(good)
    assert stats.messages == len(good)
    assert stats.connects == 1, "a bad frame must not cost the connection"
    assert [u.data for u in out] == [_decode(f).data for f in good]  # type: ignore[union-attr]
