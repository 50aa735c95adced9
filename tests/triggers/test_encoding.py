"""Batch encoding without copying ``data``, and the shared TLS context (no CA load per client)."""

from __future__ import annotations

import httpx
import msgspec

from airflow_provider_upstox.client import AsyncUpstoxClient, UpstoxClient, UpstoxClientConfig
from airflow_provider_upstox.client.aio import ashared_ssl_context
from airflow_provider_upstox.client.sync import shared_ssl_context
from airflow_provider_upstox.models.events import BatchEvent, encode_event
from airflow_provider_upstox.models.updates import Update, decode_updates, encode_updates
from airflow_provider_upstox.stream.decode import decode_frames
from airflow_provider_upstox.triggers.portfolio_stream import oldest_live_update_us
from tests.stream.test_chunks import model_frames


def test_batch_encoding_is_the_update_structs_own_array_form() -> None:
    """One wire format: the fast encoding equals msgspec's encoding of the ``array_like`` struct."""
    live, _, _ = decode_frames(model_frames(300), connection_epoch=2, received_at_us=1_000, account="AB1")
    snapshot = [
        Update(update_type="holding", data={"isin": "INE1", "quantity": 3}, source="snapshot", seq=1,
               connection_epoch=2, received_at_us=500, account=None),
    ]  # fmt: skip
    batch = snapshot + live
    encoded = encode_updates(batch)
    assert encoded == msgspec.to_builtins(batch)
    assert encoded[0][1] is snapshot[0].data  # shared, not copied: the point of the fast path
    assert decode_updates(encoded) == batch
    payload = encode_event(BatchEvent(updates=batch, account="AB1"))
    assert payload["updates"] == encoded
    assert oldest_live_update_us(batch) == 1_000  # live updates only: a snapshot row is not stream lag
    assert oldest_live_update_us(snapshot) is None


async def test_clients_share_one_tls_context_per_verify_setting() -> None:
    verifying = await ashared_ssl_context(True)
    assert verifying is shared_ssl_context(True)
    assert shared_ssl_context(False) is not verifying
    config = UpstoxClientConfig(base_url="https://example.invalid", access_token="t")
    clients = [AsyncUpstoxClient(config), AsyncUpstoxClient(config)]
    try:
        for client in clients:
            transport = client._http._transport
            assert isinstance(transport, httpx.AsyncHTTPTransport)
            assert transport._pool._ssl_context is verifying
        with UpstoxClient(config) as sync_client:
            sync_transport = sync_client._http._transport
            assert isinstance(sync_transport, httpx.HTTPTransport)
            assert sync_transport._pool._ssl_context is verifying
    finally:
        for client in clients:
            await client.aclose()
