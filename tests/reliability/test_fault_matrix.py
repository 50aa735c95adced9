"""The CI fault matrix: the ``ci=True`` rows of ``matrix.FAULTS`` (full matrix: ``python -m bench.faults``).

Each row runs the real stream operator and trigger against a faulty simulator into PostgreSQL and
must end with the store equal to the simulator's ground truth (0 mismatches), no order state
stored twice (0 duplicates), every state of every order's history and every fill stored (0 lost
intermediate states, 0 fills missing), and no token or stream code in anything the row produced (trigger
kwargs, event payloads, exception texts, log records, the portfolio database).
"""

from __future__ import annotations

import logging

import pytest

from tests.reliability import matrix
from tests.reliability.leakscan import Scanner, secrets_of

pytestmark = [pytest.mark.timeout(180)]

#: fault -> (reason, strict): open bugs, reported in /tmp/brief/bugs-from-reliability.txt
KNOWN_BROKEN: dict[str, tuple[str, bool]] = {}


def _params() -> list[object]:
    out: list[object] = []
    for fault in matrix.FAULTS:
        if not fault.ci:
            continue
        marks = (
            [pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[fault.name])]
            if fault.name in KNOWN_BROKEN
            else []
        )
        out.append(pytest.param(fault, id=fault.name.split(" (")[0].replace(" ", "-"), marks=marks))
    return out


@pytest.mark.parametrize("fault", _params())
async def test_fault_row(fault: matrix.Fault, caplog: pytest.LogCaptureFixture, postgres_url: str) -> None:
    # postgres_url: only to skip (locally) or fail (CI=true) when PostgreSQL is not reachable
    caplog.set_level(logging.DEBUG)
    row = await matrix.run_row(fault, rate=30.0)
    try:
        scanner = Scanner(secrets_of(row.secrets["token"], row.secrets["codes"]))
        scanner.scan_texts(row.texts)
        scanner.scan_text("log records", caplog.text)
        scanner.scan_database(row.store_url, name="portfolio")
    finally:
        matrix.drop_database(row.store_url)
    assert row.sent > 100, "the market did not run"
    assert row.problems == [], (
        f"{row.mismatches} mismatches: {row.problems[:10]}; failed tries {row.failures[:3]}"
    )
    assert row.duplicates == 0
    assert [str(h) for h in scanner.hits] == []
    assert row.recover_s is not None
    # Every state of every order and every fill the simulator's history holds is stored (issue 17).
    assert (row.lost_intermediate, row.fills_missing) == (0, 0), matrix.markdown_table([row])
    assert row.history_s is not None
