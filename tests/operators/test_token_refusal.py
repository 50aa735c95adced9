"""The continuous operator rides through a token expiry: waits, then resumes with a new token by itself.

The real operator and trigger (driven like Airflow drives them, ``tests/reliability/matrix.py``),
the simulator over loopback and a real PostgreSQL store: the token expires mid-session through the
simulator's control API, a new one is issued through the simulator's OAuth code exchange and written
into the connection the trigger reads (the env-var secrets source, as the plugin writes a
metadata-database connection). Nobody restarts the task.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from airflow_provider_upstox.simulator.auth import fingerprint
from airflow_provider_upstox.triggers import metrics
from tests.operators.notifiers import RecordingNotifier
from tests.reliability import matrix
from tests.reliability.leakscan import Scanner, secrets_of

pytestmark = [pytest.mark.timeout(180)]

TOKEN_FAULT = next(f for f in matrix.FAULTS if f.name.startswith("token expiry mid-session"))


class RecordingStats:
    """Airflow's ``Stats`` as the metrics module calls it, recording the names."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.names: list[str] = []

    def incr(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.names.append(name)
        self.real.incr(name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_stream_waits_for_a_new_token_and_resumes_without_a_restart(
    caplog: pytest.LogCaptureFixture, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    stats = RecordingStats(metrics._stats)
    monkeypatch.setattr(metrics, "_stats", stats)
    notifier = RecordingNotifier()
    row = await matrix.run_row(TOKEN_FAULT, rate=30.0, operator_kwargs={"on_token_refused": notifier})
    try:
        renewed = row.extra["renewed_tokens"]
        scanner = Scanner(secrets_of(row.secrets["token"], [*row.secrets["codes"], *renewed]))
        scanner.scan_texts(row.texts)
        scanner.scan_text("log records", caplog.text)
        scanner.scan_text("notifier calls", repr(notifier.calls))
        scanner.scan_database(row.store_url, name="portfolio")
    finally:
        matrix.drop_database(row.store_url)
    assert row.sent > 100, "the market did not run"

    # The task never failed: no retry, no restart; the store equals the ground truth afterwards.
    assert row.failures == []
    assert row.problems == [], f"{row.mismatches} mismatches: {row.problems[:10]}"
    assert row.duplicates == 0
    assert [str(h) for h in scanner.hits] == []

    # From the new token to the first update after the reconnect (its snapshot): under 10 s.
    loop = row.loop
    assert loop is not None
    renewed_at = row.extra["renewed_at"]
    first = next(t for t, status in loop.event_log if t > renewed_at and status == "batch")
    took = first - renewed_at
    print(f"new token -> first update after the reconnect: {took:.2f} s")
    assert took < 10.0

    # While waiting, the trigger reported the episode (then heartbeats of the same episode) and
    # made no call with the refused token: the refusal at the reconnect and its one confirmation.
    waits = [p for p in map(matrix.json.loads, loop.payload_texts) if p["status"] == "token_wait"]
    assert waits, "the trigger never reported the refused token"
    assert {(w["refused_fingerprint"], w["since_us"]) for w in waits} == {
        (fingerprint(row.secrets["token"]), waits[0]["since_us"])
    }
    assert row.extra["unauthorized_before_renewal"] <= 2
    assert not [p for p in map(matrix.json.loads, loop.payload_texts) if p["status"] == "error"]

    # One warning, one metric, one notifier call for the episode.
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "refused the access token" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert stats.names.count("upstox.stream.token_refused") == 1
    assert stats.names.count("upstox.stream.token_renewed") == 1
    assert len(notifier.calls) == 1
    assert notifier.calls[0]["conn_id"] == "upstox_default"
    assert notifier.calls[0]["account"]


async def test_fail_on_token_refused_fails_the_try(postgres_url: str) -> None:
    """The old behaviour on request: the refused token fails the try (and its retry, until renewed)."""
    row = await matrix.run_row(
        TOKEN_FAULT, rate=30.0, recover_timeout=20.0, operator_kwargs={"fail_on_token_refused": True}
    )
    matrix.drop_database(row.store_url)
    assert any("fail_on_token_refused=True" in failure for failure in row.failures), row.failures
