"""Frame decoding: one WebSocket text frame -> one :class:`~airflow_provider_upstox.models.updates.Update`.

``msgspec.json`` decoding to a plain ``dict`` was measured against typed ``msgspec.Struct`` decoding,
``pydantic`` and ``json.loads`` in ``bench/decoder_choice.py``: the untyped ``msgspec`` decode is the
fastest way to get the ``dict`` that :class:`Update` carries, and keeps unknown update types and extra
fields for free. Typed views are built later, only where a consumer needs them
(:func:`~airflow_provider_upstox.models.updates.typed_view`).

The stream reader uses :func:`decode_frames` on whole chunks of frames (everything the socket had
ready): one clock read and one sequence reservation per chunk instead of per frame, and a size
estimate per update taken from the raw frame length, so that nobody has to encode an update again
only to learn how big it is.
"""

from __future__ import annotations

from typing import Any

import msgspec

from airflow_provider_upstox.models.updates import DEPRECATED_KEYS, STREAM, Update, next_seq, reserve_seqs


class FrameDecodeError(ValueError):
    """A frame is not a JSON object with a string ``update_type``. Never carries the frame itself."""


_decode = msgspec.json.Decoder().decode
_DecodeError = msgspec.DecodeError

#: Bytes an update's compact JSON array adds to its ``data`` object besides ``update_type`` and
#: ``account``: brackets, commas, quotes, the source, a 19-digit seq, the epoch, a 16-digit timestamp.
ENTRY_OVERHEAD = 64


def entry_size(data_bytes: int, update_type: str, account: str | None) -> int:
    """Estimated length of an update's compact JSON array whose ``data`` encodes in *data_bytes*.

    For a stream update, the frame length stands for *data_bytes*: an upper bound in practice, as
    the frame also holds the deprecated duplicate keys the update drops, and re-encoding is compact.
    """
    return data_bytes + ENTRY_OVERHEAD + len(update_type) + (4 if account is None else len(account) + 2)


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


def decode_frames(
    frames: list[bytes], *, connection_epoch: int, received_at_us: int, account: str | None = None
) -> tuple[list[Update], list[int], list[tuple[int, FrameDecodeError]]]:
    """Decode a chunk of frames received together (same checks as :func:`decode_frame`).

    :returns: the updates, an estimate of each one's encoded size in bytes (see :func:`entry_size`),
        and ``(frame length, error)`` for every malformed frame, which is skipped.
    """
    updates: list[Update] = []
    sizes: list[int] = []
    errors: list[tuple[int, FrameDecodeError]] = []
    append, append_size = updates.append, sizes.append
    seq = reserve_seqs(len(frames))
    extra = ENTRY_OVERHEAD + (4 if account is None else len(account) + 2)
    deprecated = DEPRECATED_KEYS
    for frame in frames:
        try:
            obj: Any = _decode(frame)
        except _DecodeError as exc:
            errors.append((len(frame), FrameDecodeError(f"invalid JSON: {exc}")))
            continue
        if type(obj) is not dict:
            errors.append((len(frame), FrameDecodeError(f"expected a JSON object, got {type(obj).__name__}")))
            continue
        update_type = obj.get("update_type")
        if type(update_type) is not str or not update_type:
            errors.append((len(frame), FrameDecodeError("missing or non-string update_type")))
            continue
        if not deprecated.isdisjoint(obj):  # in place: the dict is fresh, and this beats a copy
            for key in deprecated.intersection(obj):
                del obj[key]
        append(
            Update(
                update_type=update_type,
                data=obj,
                source=STREAM,
                seq=seq,
                connection_epoch=connection_epoch,
                received_at_us=received_at_us,
                account=account,
            )
        )
        append_size(len(frame) + extra + len(update_type))
        seq += 1
    return updates, sizes, errors
