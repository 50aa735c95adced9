"""The chunked read path: ``decode_frames``, size estimates, byte-bounded batches, fragmented frames."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection

from airflow_provider_upstox.models.updates import Update, encode_updates, now_us
from airflow_provider_upstox.simulator.model import MarketModel
from airflow_provider_upstox.stream import FrameDecodeError, decode_frame
from airflow_provider_upstox.stream.buffer import UpdateBuffer
from airflow_provider_upstox.stream.decode import decode_frames
from tests.stream.feed_server import feed_server, order
from tests.stream.test_client import make_client, take

pytestmark = pytest.mark.timeout(30)

BAD = [b"not json", b"[1, 2]", b'{"update_type": 5}', b'{"update_type": ""}', b'{"order_id": "1"']


def model_frames(count: int) -> list[bytes]:
    model, frames = MarketModel(seed=7), []
    while len(frames) < count:
        frames.extend(e.frame for e in model.step())
    return frames[:count]


def test_decode_frames_agrees_with_decode_frame_and_bounds_sizes() -> None:
    good = model_frames(400)
    frames = good[:100] + BAD + good[100:]
    updates, sizes, errors = decode_frames(frames, connection_epoch=3, received_at_us=42, account="AB1234")
    assert len(errors) == len(BAD)
    assert all(isinstance(e, FrameDecodeError) for _, e in errors)
    one_by_one = [decode_frame(f, connection_epoch=3, received_at_us=42, account="AB1234") for f in good]
    assert [(u.update_type, u.data) for u in updates] == [(u.update_type, u.data) for u in one_by_one]
    assert all("userId" not in u.data and "tradingsymbol" not in u.data for u in updates)
    seqs = [u.seq for u in updates]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert seqs[0] > one_by_one[-1].seq - 10**12  # clock based, like next_seq
    assert {(u.connection_epoch, u.received_at_us, u.account, u.source) for u in updates} == {
        (3, 42, "AB1234", "stream")
    }
    # The estimate is an upper bound of each update's compact encoded array (what events carry).
    for update, size in zip(updates, sizes, strict=True):
        actual = len(msgspec.json.encode(encode_updates([update])[0]))
        assert actual <= size <= actual + 200, (actual, size)


def _updates(n: int) -> list[Update]:
    return [Update(update_type="order", data={"order_id": str(i)}, seq=i) for i in range(n)]


async def test_batches_are_cut_in_bytes_and_wake_on_bytes() -> None:
    buffer = UpdateBuffer(1000)
    buffer.extend(_updates(10), [100] * 10)
    batch, nbytes = await buffer.get_sized_batch(50, 0.0, max_bytes=350)
    assert [u.seq for u in batch] == [0, 1, 2]
    assert nbytes == 300
    assert buffer.nbytes == 700
    big, nbytes = await buffer.get_sized_batch(50, 0.0, max_bytes=50)  # at least one, even if too big
    assert [u.seq for u in big] == [3]
    assert nbytes == 100

    # A byte-full batch completes at once instead of waiting max_wait for max_items.
    async def feed() -> None:
        await asyncio.sleep(0.05)
        buffer.extend(_updates(5), [200] * 5)

    task = asyncio.create_task(feed())
    loop = asyncio.get_running_loop()
    start = loop.time()
    batch, nbytes = await buffer.get_sized_batch(10_000, 5.0, max_bytes=1000)
    assert loop.time() - start < 2.0
    assert nbytes <= 1000
    assert len(batch) >= 5
    await task
    buffer.unget(batch[-2:], [200, 200])
    assert buffer.nbytes == sum(buffer.sizes)


async def test_fragmented_message_between_small_frames_keeps_order() -> None:
    async def script(ws: ServerConnection) -> None:
        for i in range(50):
            await ws.send(order(f"A{i}"))
        big = order("F", tag="x" * 5000)
        await ws.send([big[i : i + 1000] for i in range(0, len(big), 1000)])  # fragmented text message
        for i in range(50):
            await ws.send(order(f"B{i}"))
        await ws.wait_closed()

    async with feed_server(script) as server, make_client(server) as client:
        updates = await take(client, 101)
    expected = [f"A{i}" for i in range(50)] + ["F"] + [f"B{i}" for i in range(50)]
    assert [u.data["order_id"] for u in updates] == expected
    assert client.stats.connects == 1


async def test_batch_wait_counts_from_the_oldest_buffered_update() -> None:
    """Updates that queued while nobody asked (a deferral hand-off, a busy consumer) have waited
    already: the batch goes at once instead of waiting ``max_wait`` again. A fresh update still
    waits ``max_wait`` for company."""
    loop = asyncio.get_running_loop()
    buffer = UpdateBuffer(1000)
    old = [Update(update_type="order", data={"order_id": "old"}, seq=1, received_at_us=now_us() - 2_000_000)]
    buffer.extend(old, [100])
    start = loop.time()
    batch, _ = await buffer.get_sized_batch(500, 1.0)
    assert [u.seq for u in batch] == [1]
    assert loop.time() - start < 0.1

    half = [Update(update_type="order", data={"order_id": "h"}, seq=2, received_at_us=now_us() - 400_000)]
    buffer.extend(half, [100])
    start = loop.time()
    await buffer.get_sized_batch(500, 1.0)
    assert 0.45 < loop.time() - start < 0.9  # the remaining ~0.6 s, not 1 s

    buffer.extend(
        [Update(update_type="order", data={"order_id": "new"}, seq=3, received_at_us=now_us())], [100]
    )
    start = loop.time()
    await buffer.get_sized_batch(500, 0.3)
    assert loop.time() - start >= 0.25
