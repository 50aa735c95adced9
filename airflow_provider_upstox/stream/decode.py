"""Frame decoding: one WebSocket text frame -> one :class:`~airflow_provider_upstox.models.updates.Update`.

``msgspec.json`` decoding to a plain ``dict`` was measured against typed ``msgspec.Struct`` decoding,
``pydantic`` and ``json.loads`` in ``bench/decoder_choice.py``: the untyped ``msgspec`` decode is the
fastest way to get the ``dict`` that :class:`Update` carries, and keeps unknown update types and extra
fields for free. Typed views are built later, only where a consumer needs them
(:func:`~airflow_provider_upstox.models.updates.typed_view`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from airflow_provider_upstox.models.updates import DEPRECATED_KEYS, STREAM, Update, next_seq


class FrameDecodeError(ValueError):
    """A frame is not a JSON object with a string ``update_type``. Never carries the frame itself."""


_decode = msgspec.json.Decoder().decode


def decode_frame(
    frame: bytes | str, *, connection_epoch: int, received_at_us: int, account: str | None = None
) -> Update:
    """Decode one stream frame.

    :raises FrameDecodeError: the frame is not JSON, not an object, or has no string ``update_type``.
    """
    try:
        obj: Any = _decode(frame)
    except msgspec.DecodeError as exc:
        raise FrameDecodeError(f"invalid JSON: {exc}") from None
    if type(obj) is not dict:
        raise FrameDecodeError(f"expected a JSON object, got {type(obj).__name__}")
    update_type = obj.get("update_type")
    if type(update_type) is not str or not update_type:
        raise FrameDecodeError("missing or non-string update_type")
    if not DEPRECATED_KEYS.isdisjoint(obj):  # in place: the dict is fresh, and this beats a copy
        for key in DEPRECATED_KEYS.intersection(obj):
            del obj[key]
    return Update(
        update_type=update_type,
        data=obj,
        source=STREAM,
        seq=next_seq(),
        connection_epoch=connection_epoch,
        received_at_us=received_at_us,
        account=account,
    )
