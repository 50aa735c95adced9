"""The example DAGs import cleanly, as the dag-processor would load them."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"upstox_portfolio_stream", "upstox_portfolio_events", "upstox_reconcile"}


@pytest.fixture
def dagbag(monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("UPSTOX_CONN_IDS", "upstox_default, upstox_second")
    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) >= EXPECTED


def test_one_task_and_one_watcher_per_account(dagbag) -> None:
    stream = dagbag.dags["upstox_portfolio_stream"]
    assert sorted(stream.task_ids) == ["stream__upstox_default", "stream__upstox_second"]
    assert stream.max_active_runs == 1
    assert set(stream.params) >= {"stop_after_idle_seconds", "max_batches", "stop_at"}
    for task in stream.tasks:  # a real backoff: Airflow 3 reads True as a multiplier of 1
        assert (task.retries, task.retry_exponential_backoff) == (3, 2.0)

    events = dagbag.dags["upstox_portfolio_events"]
    assert events.max_active_runs == 1
    # asset events, plus a catch-up run every 5 minutes (apache/airflow#56050)
    assert type(events.timetable).__name__ == "AssetOrTimeSchedule"
    assert events.timetable.timetable.expression == "*/5 * * * *"
    task = events.get_task("persist_events")
    # One mapped backfill task over the groups of accounts with work, not a static task per account.
    assert sorted(events.task_ids) == ["backfill_history", "persist_events"]
    backfill = events.get_task("backfill_history")
    assert [t.task_id for t in task.downstream_list] == ["backfill_history"]
    assert type(backfill).__name__ == "MappedOperator"
    assert task.return_backfill_groups
    watchers = [w for asset in task.inlets for w in asset.watchers]
    assert sorted(w.name for w in watchers) == [
        "upstox_watcher__upstox_default",
        "upstox_watcher__upstox_second",
    ]
    for watcher in watchers:
        classpath, kwargs = watcher.trigger.serialize()
        assert classpath.endswith("UpstoxPortfolioStreamTrigger")
        assert kwargs["upstox_conn_id"] in ("upstox_default", "upstox_second")
        # Settings of the token-refusal wait are named after the token, but none carries it.
        token_settings = {"token_poll_interval", "token_probe_interval", "token_wait"}
        names = set(kwargs) - token_settings
        assert not any("token" in str(k).lower() or "password" in str(k).lower() for k in names)
        assert kwargs["token_wait"] is None

    reconcile = dagbag.dags["upstox_reconcile"]
    assert sorted(reconcile.task_ids) == ["reconcile__upstox_default", "reconcile__upstox_second"]


def test_dags_serialize(dagbag) -> None:
    """What the dag-processor stores must round-trip (templated params, asset aliases, watchers)."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id in EXPECTED:
        data = DagSerialization.to_dict(dagbag.dags[dag_id])
        assert DagSerialization.from_dict(data).dag_id == dag_id


def test_events_catch_up_schedule_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("UPSTOX_EVENTS_CATCHUP_CRON", "off")
    dagbag = DagBag(dag_folder=str(DAGS_DIR / "upstox_portfolio_events.py"))
    assert dagbag.import_errors == {}
    events = dagbag.dags["upstox_portfolio_events"]
    assert type(events.timetable).__name__ == "AssetTriggeredTimetable"


@pytest.mark.parametrize(("value", "expected"), [(None, "15:30"), ("23:30", "23:30"), ("off", None)])
def test_stream_stop_at_default_from_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str | None
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    if value is None:
        monkeypatch.delenv("UPSTOX_STOP_AT", raising=False)
    else:
        monkeypatch.setenv("UPSTOX_STOP_AT", value)
    dagbag = DagBag(dag_folder=str(DAGS_DIR / "upstox_portfolio_stream.py"))
    assert dagbag.import_errors == {}
    assert dagbag.dags["upstox_portfolio_stream"].params["stop_at"] == expected


def test_bad_stop_at_setting_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("UPSTOX_STOP_AT", "after lunch")
    dagbag = DagBag(dag_folder=str(DAGS_DIR / "upstox_portfolio_stream.py"))
    (error,) = dagbag.import_errors.values()
    assert "UPSTOX_STOP_AT" in error
    assert "HH:MM" in error


def test_events_dag_groups_accounts_into_one_watcher_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """``UPSTOX_WATCH_GROUP_SIZE``: one watched asset (and trigger) per group, not per account."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("UPSTOX_CONN_IDS", "a1,a2,a3")
    monkeypatch.setenv("UPSTOX_WATCH_GROUP_SIZE", "2")
    dagbag = DagBag(dag_folder=str(DAGS_DIR / "upstox_portfolio_events.py"))
    assert dagbag.import_errors == {}
    inlets = dagbag.dags["upstox_portfolio_events"].get_task("persist_events").inlets
    assert [a.name for a in inlets] == ["upstox_events_group__g0", "upstox_events_group__g1"]
    kwargs = [w.trigger.serialize()[1]["upstox_conn_ids"] for a in inlets for w in a.watchers]
    assert kwargs == [["a1", "a2"], ["a3"]]

    monkeypatch.setenv("UPSTOX_WATCH_GROUP_SIZE", "two")
    dagbag = DagBag(dag_folder=str(DAGS_DIR / "upstox_portfolio_events.py"))
    assert "UPSTOX_WATCH_GROUP_SIZE" in str(dagbag.import_errors)
