"""``upstox_token_renewal`` as the dag-processor loads it: schedule, one task per account."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def dag(monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("UPSTOX_CONN_IDS", "upstox_default, upstox_second")
    bag = DagBag(dag_folder=str(DAGS_DIR / "upstox_token_renewal.py"))
    assert bag.import_errors == {}
    return bag.dags["upstox_token_renewal"]


def test_before_market_open_on_weekdays_india_time(dag) -> None:
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 8 * * 1-5"
    assert str(getattr(dag.timetable.timezone, "name", dag.timetable.timezone)) == "Asia/Kolkata"
    assert dag.catchup is False


def test_one_task_per_account_without_retries(dag) -> None:
    assert sorted(dag.task_ids) == ["renew__upstox_default", "renew__upstox_second"]
    for task in dag.tasks:
        assert type(task).__name__ == "UpstoxTokenRenewalOperator"
        assert task.retries == 0  # a retry would prompt the user again
        assert task.upstox_conn_id in ("upstox_default", "upstox_second")


def test_own_connection_list_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("UPSTOX_TOKEN_RENEWAL_CONN_IDS", "acct_a,acct_b,acct_c")
    bag = DagBag(dag_folder=str(DAGS_DIR / "upstox_token_renewal.py"))
    assert sorted(bag.dags["upstox_token_renewal"].task_ids) == [
        "renew__acct_a",
        "renew__acct_b",
        "renew__acct_c",
    ]
