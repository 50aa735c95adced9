"""The one update type -> REST read map, as the trigger (async client) and the hook (sync) use it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_provider_upstox.client import AsyncUpstoxClient, UpstoxClient, UpstoxClientConfig
from airflow_provider_upstox.hooks.upstox import UpstoxHook, snapshot_reader
from airflow_provider_upstox.models.updates import UPDATE_TYPES, natural_key


@pytest.mark.simulator(seed=7, scenario="quiet")  # nothing moves between the reads
async def test_every_update_type_reads_its_own_rows_the_same_way_everywhere(
    upstox_conn: Any, simulator: Any
) -> None:
    await upstox_conn.acontrol.step(40)
    config = UpstoxClientConfig(base_url=simulator.base_url, access_token=simulator.token)
    hook = UpstoxHook("upstox_default")
    async with AsyncUpstoxClient(config) as rest:
        for update_type in UPDATE_TYPES:
            rows = await snapshot_reader(rest, update_type)()
            assert rows, update_type
            assert all(natural_key(update_type, row) for row in rows)  # its own kind's key
            with UpstoxClient(config) as sync_client:
                assert await asyncio.to_thread(snapshot_reader(sync_client, update_type)) == rows
            assert await asyncio.to_thread(hook.get_snapshot, update_type) == rows


def test_unknown_update_type_is_named() -> None:
    with pytest.raises(ValueError, match=r"no snapshot read for update type 'trades'.*order"):
        snapshot_reader(UpstoxHook("upstox_default"), "trades")
