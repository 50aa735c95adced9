"""The two fault rows that need real processes, on a real Airflow stack (see ``real_stack.py``).

Each row starts its own api-server, dag-processor, scheduler (LocalExecutor) and triggerer with a
PostgreSQL metadata database, runs the shipped continuous DAG ``upstox_portfolio_stream`` against a
simulator into PostgreSQL, and then:

* kills the whole ``airflow triggerer`` with SIGKILL mid-stream and starts a new one: Airflow must
  reassign the trigger, and the store must still converge to the ground truth;
* kills the task's process with SIGKILL twice: Airflow must record two failed tries and retry, and
  the store must still converge, without a duplicate order state.

Then everything that row's Airflow wrote (``AIRFLOW_HOME``: task, trigger and process logs; every
table of the metadata database; the store) is scanned for the token and every stream code the
simulator issued. About 80-90 s per row on 2 cores.
"""

from __future__ import annotations

import pytest

from tests.reliability import matrix, real_stack

pytestmark = [pytest.mark.slow, pytest.mark.airflow_server, pytest.mark.timeout(600)]


@pytest.mark.parametrize(
    "fault", [pytest.param(f, id=f.act.__name__.replace("_", "-")) for f in real_stack.REAL_FAULTS if f.ci]
)
def test_real_stack_row(fault: real_stack.RealFault, postgres_url: str) -> None:
    # postgres_url: only to skip (locally) or fail (CI=true) when PostgreSQL is not reachable
    row = real_stack.run_row(fault)
    try:
        scanner = real_stack.scan_row(row)
        logs = real_stack.task_logs(row)
        summary = f"{matrix.markdown_table([row])}\nextras {row.extras}\ntries {row.tries}"
    finally:
        row.cleanup()
    assert row.sent > 100, f"the market did not run\n{summary}"
    assert row.problems == [], f"{row.mismatches} mismatches: {row.problems[:10]}\n{summary}"
    assert row.duplicates == 0, summary
    assert row.recover_s is not None, summary
    assert (row.lost_intermediate, row.fills_missing) == (0, 0), summary  # every state and fill
    if fault.act is real_stack.kill_task:
        assert [state for _, state in row.tries[:2]] == ["failed", "failed"], summary
        assert len(row.tries) == 3, summary
    else:
        assert row.extras["reassigned after (s)"] > 0, summary
    # the scan must have seen what it is meant to: task and trigger logs, the metadata tables
    assert any(p.name.endswith(".log") and ".trigger." in p.name for p in logs), summary
    assert any(p.name.startswith("attempt=") and p.name.endswith("attempt=1.log") for p in logs), summary
    assert row.extras["metadata tables scanned"] > 20, summary
    assert scanner.places > 100, summary
    assert [str(h) for h in scanner.hits] == [], summary
