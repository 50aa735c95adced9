"""Event encoding without ``to_builtins``, and the shared TLS context (no CA load per client)."""

from __future__ import annotations

import httpx

from airflow_provider_upstox.client import AsyncUpstoxClient, UpstoxClient, UpstoxClientConfig
from airflow_provider_upstox.client.aio import ashared_ssl_context
from airflow_provider_upstox.client.sync import shared_ssl_context
from airflow_provider_upstox.models.updates import Update, decode_updates, encode_updates
from airflow_provider_upstox.stream.decode import decode_frames
from airflow_provider_upstox.triggers.portfolio_stream import _encode_batch
from tests.stream.test_chunks import model_frames


def test_fast_encoding_equals_encode_updates() -> None:
    live, _, _ = decode_frames(model_frames(300), connection_epoch=2, received_at_us=1_000, account="AB1")
    snapshot = [
        Update(update_type="holding", data={"isin": "INE1", "quantity": 3}, source="snapshot", seq=1,
               connection_epoch=2, received_at_us=500, account=None),
    ]  # fmt: skip
    batch = snapshot + live
    encoded, oldest = _encode_batch(batch)
    assert encoded == encode_updates(batch)
    assert decode_updates(encoded) == batch
    assert oldest == 1_000  # live updates only: a snapshot row's time is not stream lag
    assert _encode_batch(snapshot)[1] is None


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
