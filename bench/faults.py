"""Fault matrix: every fault of ``tests/reliability/matrix.py`` end to end, printed as a markdown table.

    python -m bench.faults                  # the full matrix (about 7 minutes)
    python -m bench.faults --only "reset"   # rows whose name contains the text
    python -m bench.faults --ci             # the smaller CI matrix
    python -m bench.faults --no-real        # without the two real-Airflow rows (about 3 minutes less)

Each row: a fresh simulator and PostgreSQL database, the real stream operator and trigger driven as
Airflow drives them, the fault injected while the market runs, then the store compared with the
simulator's ground truth (see the matrix module for what each figure means). Every row is also
scanned for the token and the stream codes the simulator issued (trigger kwargs, event payloads,
exception texts, log records, the portfolio database). Exit status 1 if any row has a mismatch, a
duplicate or a leak.

The last rows (``tests/reliability/real_stack.py``) run on a real Airflow stack instead (api-server,
dag-processor, scheduler on LocalExecutor, triggerer; PostgreSQL metadata DB): the whole triggerer
killed with SIGKILL and restarted, and the task's process killed with SIGKILL so that Airflow retries
it. Their leak scan covers everything that Airflow wrote: ``AIRFLOW_HOME`` (task, trigger and process
logs), every table of the metadata database, and the portfolio database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="upstox-faults-home-"))

from tests.reliability import matrix, real_stack
from tests.reliability.leakscan import Scanner, secrets_of


class _Capture(logging.Handler):
    """Every log record of the run, formatted, for the leak scan."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")
        except Exception:
            self.lines.append(f"{record.name} <unformattable>")


def _report(name: str, row: matrix.RowResult, scanner: Scanner, detail: str = "") -> list[str]:
    """Print one row's outcome as it finishes (stderr); returns its secret hits, named by the row."""
    recover = "not recovered" if row.recover_s is None else f"{row.recover_s:.1f} s"
    print(
        f"{name}: mismatches {row.mismatches}, duplicates {row.duplicates}, "
        f"recovered in {recover}, leaks {len(scanner.hits)}{detail}",
        file=sys.stderr,
        flush=True,
    )
    for problem in row.problems[:5]:
        print(f"    {problem}", file=sys.stderr)
    return [f"{name}: {hit}" for hit in scanner.hits]


async def _main(args: argparse.Namespace) -> int:
    faults = [f for f in matrix.FAULTS if (not args.ci or f.ci) and (not args.only or args.only in f.name)]
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    rows: list[matrix.RowResult] = []
    leaks: list[str] = []
    started = time.monotonic()
    for fault in faults:
        capture.lines.clear()
        row = await matrix.run_row(fault, seed=args.seed, rate=args.rate)
        scanner = Scanner(secrets_of(row.secrets["token"], row.secrets["codes"]))
        scanner.scan_texts(row.texts)
        scanner.scan_text("log records", "\n".join(capture.lines))
        scanner.scan_database(row.store_url, name="portfolio")
        matrix.drop_database(row.store_url)
        leaks += _report(fault.name, row, scanner)
        rows.append(row)
    if not args.no_real:
        real = real_stack.REAL_FAULTS
        for real_fault in [
            f for f in real if (not args.ci or f.ci) and (not args.only or args.only in f.name)
        ]:
            real_row = await asyncio.to_thread(real_stack.run_row, real_fault, seed=args.seed, rate=args.rate)
            try:
                scanner = await asyncio.to_thread(real_stack.scan_row, real_row)
            finally:
                real_row.cleanup()
            detail = f" ({scanner.places} files/rows/texts scanned); {real_row.extras}"
            leaks += _report(real_fault.name, real_row, scanner, detail)
            rows.append(real_row)
    print()
    print(matrix.markdown_table(rows))
    print()
    bad = [r.fault for r in rows if r.mismatches or r.duplicates]
    codes = sum(len(r.secrets["codes"]) for r in rows)
    print(
        f"{len(rows)} faults in {time.monotonic() - started:.0f} s; rows with mismatches or duplicates: "
        f"{len(bad)}; secret hits (token + {codes} issued codes): {len(leaks)}"
    )
    for line in leaks:
        print(f"LEAK {line}")
    return 1 if bad or leaks else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ci", action="store_true", help="only the rows of the CI matrix")
    parser.add_argument("--only", help="only rows whose name contains this text")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=40.0, help="market updates per second")
    parser.add_argument("--no-real", action="store_true", help="skip the rows on a real Airflow stack")
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
