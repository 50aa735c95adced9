"""The record of reconciliation runs: ``upstox_reconciliation_runs`` and ``..._discrepancies``.

A run row is inserted as ``running`` before anything is compared, so a run that dies half-way
is visible; :func:`finish_run` writes every difference and closes the run row in one transaction.
The differences come from :mod:`airflow_provider_upstox.reconciliation`; the store only needs their
attributes (:class:`DiscrepancyRecord`), so it does not import the layer above it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from sqlalchemy.engine import Engine

from airflow_provider_upstox.store import schema

#: ``status`` of a run: ``running`` until :func:`finish_run`; ``repaired`` when every difference
#: was repaired, ``discrepancies`` when some remain, ``error`` when the run failed.
RunStatus = Literal["running", "clean", "discrepancies", "repaired", "error"]


class DiscrepancyRecord(Protocol):
    """One difference between a stored object and the snapshot (``reconciliation.Discrepancy``)."""

    @property
    def update_type(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def field(self) -> str | None: ...

    @property
    def db_value(self) -> Any: ...

    @property
    def snapshot_value(self) -> Any: ...


def start_run(
    engine: Engine,
    *,
    account: str,
    update_types: Sequence[str],
    upstox_conn_id: str | None = None,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
) -> int:
    """Insert a ``running`` run row; returns its ``run_id``."""
    runs = schema.reconciliation_runs
    with engine.begin() as conn:
        result = conn.execute(
            runs.insert().values(
                account=account,
                upstox_conn_id=upstox_conn_id,
                dag_id=dag_id,
                dag_run_id=dag_run_id,
                update_types=",".join(update_types),
                started_at=datetime.now(timezone.utc),
                status="running",
                compared=0,
                discrepancies=0,
                repaired=0,
            )
        )
        key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database returned no id for the reconciliation run")
    return int(key[0])


def finish_run(
    engine: Engine,
    run_id: int,
    *,
    account: str,
    discrepancies: Sequence[DiscrepancyRecord],
    repaired_keys: Collection[tuple[str, str]],
    compared: int,
    status: RunStatus,
) -> None:
    """Record every discrepancy of run *run_id* and close its row, in one transaction.

    :param repaired_keys: ``(update_type, key)`` pairs that agree with the snapshot after repair.
    :param compared: how many keys were compared.
    """
    repaired = set(repaired_keys)
    rows = [
        {
            "run_id": run_id,
            "account": account,
            "update_type": d.update_type,
            "natural_key": d.key,
            "kind": d.kind,
            "field": d.field,
            "db_value": _json(d.db_value),
            "snapshot_value": _json(d.snapshot_value),
            "repaired": (d.update_type, d.key) in repaired,
        }
        for d in discrepancies
    ]
    runs = schema.reconciliation_runs
    with engine.begin() as conn:
        if rows:
            conn.execute(schema.reconciliation_discrepancies.insert(), rows)
        conn.execute(
            runs.update()
            .where(runs.c.run_id == run_id)
            .values(
                finished_at=datetime.now(timezone.utc),
                compared=compared,
                discrepancies=len(discrepancies),
                repaired=len({(d.update_type, d.key) for d in discrepancies} & repaired),
                status=status,
            )
        )


def _json(value: Any) -> str | None:
    """Text for the JSON ``Text`` columns (``Decimal``, datetimes as strings), ``None`` stays NULL."""
    return None if value is None else json.dumps(value, default=str)
