"""Which decoder turns a stream frame into an ``Update`` fastest? (``python bench/decoder_choice.py``)

Decodes the same realistic frames (order/position/holding/GTT messages of ``docs/PROTOCOL.md`` §2,
mixed) with each candidate and prints frames/s and the ratio to the baseline, ``msgspec.json.decode``
to a dict then ``models.strip_deprecated``. The stream client uses the winner in ``stream/decode.py``;
the typed views (``models.typed_view``) are built later, only where a consumer needs them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pydantic

from airflow_provider_upstox.models.updates import Order, Update, next_seq, now_us, strip_deprecated
from airflow_provider_upstox.stream.decode import decode_frame, decode_frames

ORDER = {
    "update_type": "order", "user_id": "AB1234", "userId": "AB1234", "exchange": "NSE",
    "instrument_token": "NSE_EQ|INE848E01016", "instrument_key": "NSE_EQ|INE848E01016",
    "trading_symbol": "NHPC-EQ", "tradingsymbol": "NHPC-EQ", "product": "D", "order_type": "MARKET",
    "average_price": 0, "price": 0, "trigger_price": 0, "quantity": 1, "disclosed_quantity": 0,
    "pending_quantity": 1, "transaction_type": "BUY", "order_ref_id": "57744821658411",
    "exchange_order_id": "", "parent_order_id": None, "validity": "DAY",
    "status": "put order req received", "is_amo": False, "variety": "SIMPLE", "tag": None,
    "exchange_timestamp": None, "status_message": "", "order_id": "240221025997024",
    "order_request_id": "1", "order_timestamp": "2024-02-21 14:40:02", "filled_quantity": 0,
    "guid": None, "placed_by": "AB1234", "status_message_raw": None,
}  # fmt: skip
POSITION = {
    "update_type": "position", "instrument_token": "NSE_EQ|INE848E01016",
    "instrument_key": "NSE_EQ|INE848E01016", "average_price": 0, "buy_value": 185.85,
    "overnight_quantity": 0, "exchange": "NSE_EQ", "day_buy_value": 185.85, "day_buy_price": 92.92,
    "overnight_buy_amount": 0, "overnight_buy_quantity": 0, "day_buy_quantity": 2, "day_sell_value": 0,
    "day_sell_price": 0, "overnight_sell_amount": 0, "overnight_sell_quantity": 0,
    "day_sell_quantity": 0, "multiplier": 1, "quantity": 2, "product": "D", "sell_value": 0,
    "buy_price": 92.925, "sell_price": 0,
}  # fmt: skip
FRAMES = [json.dumps(d).encode() for d in (ORDER, ORDER, ORDER, POSITION)]


class PydanticFrame(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    update_type: str


_dict_adapter = pydantic.TypeAdapter(dict[str, Any])
_msgspec_dict = msgspec.json.Decoder()
_msgspec_order = msgspec.json.Decoder(Order)


def _update(data: dict[str, Any]) -> Update:
    return Update(update_type=data["update_type"], data=data, seq=next_seq(), received_at_us=now_us())


CANDIDATES: dict[str, Callable[[bytes], Any]] = {
    "msgspec dict + strip_deprecated (baseline)": lambda f: _update(
        strip_deprecated(_msgspec_dict.decode(f))
    ),
    "stream.decode.decode_frame (checks + Update)": lambda f: decode_frame(
        f, connection_epoch=1, received_at_us=now_us()
    ),
    "json.loads + strip_deprecated": lambda f: _update(strip_deprecated(json.loads(f))),
    "pydantic TypeAdapter(dict) + strip": lambda f: _update(strip_deprecated(_dict_adapter.validate_json(f))),
    "pydantic BaseModel(extra=allow) -> dict": lambda f: _update(
        strip_deprecated(PydanticFrame.model_validate_json(f).model_dump())
    ),
    "msgspec typed Order struct (orders only) -> dict": lambda f: _update(
        {"update_type": "order", **msgspec.structs.asdict(_msgspec_order.decode(f))}
    ),
}


def measure(name: str, fn: Callable[[bytes], Any], seconds: float) -> float:
    frames = FRAMES[:1] if "orders only" in name else FRAMES
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            for frame in frames:
                fn(frame)
        n += 500 * len(frames)
    return n / (time.perf_counter() - start)


def measure_chunks(seconds: float) -> float:
    """``decode_frames`` on chunks of 256 frames, as the stream reader calls it: frames/s."""
    chunk = (FRAMES * (256 // len(FRAMES) + 1))[:256]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            decode_frames(chunk, connection_epoch=1, received_at_us=now_us())
        n += 20 * len(chunk)
    return n / (time.perf_counter() - start)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    results = {name: measure(name, fn, seconds) for name, fn in CANDIDATES.items()}
    results["stream.decode.decode_frames (chunks of 256, the reader)"] = measure_chunks(seconds)
    base = results["msgspec dict + strip_deprecated (baseline)"]
    print(f"{'decoder':58} {'frames/s':>12} {'vs baseline':>12}")
    for name, rate in results.items():
        print(f"{name:58} {rate:12,.0f} {rate / base:11.2f}x")


if __name__ == "__main__":
    main()
