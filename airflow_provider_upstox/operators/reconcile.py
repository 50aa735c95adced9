"""``UpstoxReconcileOperator``: compare the portfolio store with Upstox's REST snapshots.

The stream has no replay, so the store can only be as good as the stream plus the snapshot taken on
each reconnect. This operator checks that claim: it reads the order book, positions, holdings and
GTT orders over REST through the :class:`~airflow_provider_upstox.hooks.upstox.UpstoxHook`,
compares them with the stored objects of the same account (see
:mod:`airflow_provider_upstox.reconciliation` for what is compared and what is out of scope),
records the run and every difference through the store, optionally repairs by applying the
snapshot through the store (the store's ordering rule still applies, so a snapshot never
overwrites a newer live state), and fails or warns.

With orders reconciled and ``check_fills`` on, it also reads the day's trade book, records the
fills the store lacks (a fill is an immutable fact, inserted once, as after each stream snapshot),
and checks that every order's ``filled_quantity`` equals the sum of its fills
(:func:`~airflow_provider_upstox.reconciliation.compare_fills`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator, Context

from airflow_provider_upstox.models.updates import (
    INDIA_TZ,
    ORDER,
    SNAPSHOT,
    Update,
    next_seq,
    normalize_update_types,
    now_us,
    strip_deprecated,
)
from airflow_provider_upstox.operators._db import open_store
from airflow_provider_upstox.reconciliation import (
    Discrepancy,
    compare,
    compare_fills,
    index_rows,
    trade_book_days,
)

if TYPE_CHECKING:
    from airflow_provider_upstox.hooks.upstox import UpstoxHook
    from airflow_provider_upstox.store import PortfolioStore
    from airflow_provider_upstox.store.reconciliation_log import RunStatus

log = logging.getLogger(__name__)

OnDiscrepancy = Literal["fail", "warn", "ignore"]


class UpstoxReconciliationError(RuntimeError):
    """Reconciliation found differences and ``on_discrepancy="fail"``."""


class UpstoxReconcileOperator(BaseOperator):
    """Compare the store with Upstox REST snapshots; record, optionally repair, fail or warn.

    :param upstox_conn_id: the ``upstox`` connection whose account is reconciled.
    :param sql_conn_id: the store's SQL connection.
    :param update_types: kinds to reconcile (default all four).
    :param repair: apply the snapshot rows of every difference through the store.
    :param on_discrepancy: ``"fail"`` (default), ``"warn"`` or ``"ignore"``; with ``repair``, only
        differences that remain after repair count.
    :param check_fills: also check each order's filled quantity against the sum of its fills.
    """

    template_fields: Sequence[str] = ("sql_conn_id", "update_types", "repair", "on_discrepancy")
    ui_color = "#2d8259"

    def __init__(
        self,
        *,
        upstox_conn_id: str = "upstox_default",
        sql_conn_id: str = "upstox_db",
        update_types: str | Sequence[str] | None = None,
        repair: bool | str = False,
        on_discrepancy: OnDiscrepancy | str = "fail",
        check_fills: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.upstox_conn_id = upstox_conn_id
        self.sql_conn_id = sql_conn_id
        self.update_types = update_types
        self.repair = repair
        self.on_discrepancy = on_discrepancy
        self.check_fills = check_fills

    def _fetch(self, hook: UpstoxHook, update_type: str) -> list[dict[str, Any]]:
        return [strip_deprecated(dict(row)) for row in hook.get_snapshot(update_type)]

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_upstox.hooks.upstox import UpstoxHook

        policy = str(self.on_discrepancy).strip().lower()
        if policy not in ("fail", "warn", "ignore"):
            raise ValueError(f"on_discrepancy must be fail, warn or ignore, got {self.on_discrepancy!r}")
        repair = _truthy(self.repair)
        types = normalize_update_types(self.update_types)
        hook = UpstoxHook(upstox_conn_id=self.upstox_conn_id)
        store = open_store(self.sql_conn_id)
        account = str(hook.get_account_id())
        ti = context["ti"]
        run_id = store.start_reconciliation_run(
            account=account,
            update_types=types,
            upstox_conn_id=self.upstox_conn_id,
            dag_id=ti.dag_id,
            dag_run_id=ti.run_id,
        )
        try:
            discrepancies, compared, snapshots, started_us = self._compare_all(hook, store, account, types)
            repaired: set[tuple[str, str]] = set()
            if repair and discrepancies:
                repaired = self._repair(store, account, discrepancies, snapshots, started_us)
        except Exception:
            store.finish_reconciliation_run(
                run_id, account=account, discrepancies=[], repaired_keys=(), compared=0, status="error"
            )
            raise
        remaining = [d for d in discrepancies if (d.update_type, d.key) not in repaired]
        status: RunStatus = (
            "clean" if not discrepancies else ("repaired" if not remaining else "discrepancies")
        )
        store.finish_reconciliation_run(
            run_id,
            account=account,
            discrepancies=discrepancies,
            repaired_keys=repaired,
            compared=compared,
            status=status,
        )
        summary = {
            "run_id": run_id,
            "account": account,
            "compared": compared,
            "discrepancies": len(discrepancies),
            "repaired": len(repaired),
            "remaining": len(remaining),
            "by_kind": _count_by(discrepancies),
            "status": status,
        }
        log.info("Reconciliation of %s: %s", account, summary)
        for d in remaining[:20]:
            log.warning(
                "Discrepancy %s %s %s field=%s db=%r snapshot=%r",
                d.update_type,
                d.key,
                d.kind,
                d.field,
                d.db_value if d.field else None,
                d.snapshot_value if d.field else None,
            )
        if remaining and policy == "fail":
            raise UpstoxReconciliationError(
                f"{len(remaining)} discrepancies between the store and Upstox for account {account} "
                f"(run {run_id}; see upstox_reconciliation_discrepancies): {summary['by_kind']}"
            )
        return summary

    def _compare_all(
        self, hook: UpstoxHook, store: PortfolioStore, account: str, types: Sequence[str]
    ) -> tuple[list[Discrepancy], int, dict[str, dict[str, dict[str, Any]]], int]:
        started_us = now_us()
        today = datetime.now(INDIA_TZ).date()
        snapshots: dict[str, dict[str, dict[str, Any]]] = {}
        found: list[Discrepancy] = []
        compared = 0
        for update_type in types:
            snapshot = index_rows(update_type, self._fetch(hook, update_type))
            stored = store.read_stored_objects(account, update_type)
            snapshots[update_type] = snapshot
            compared += len(set(snapshot) | set(stored))
            found.extend(compare(update_type, stored, snapshot, today=today))
            if update_type == ORDER and self.check_fills:
                received = datetime.fromtimestamp(now_us() / 1e6, tz=timezone.utc)
                book = hook.get_trades()
                store.record_trade_book(account, book, received)
                days = trade_book_days(book, today)
                found.extend(compare_fills(stored, store.filled_by_fills(account), days=days))
        return found, compared, snapshots, started_us

    def _repair(
        self,
        store: PortfolioStore,
        account: str,
        discrepancies: list[Discrepancy],
        snapshots: dict[str, dict[str, dict[str, Any]]],
        started_us: int,
    ) -> set[tuple[str, str]]:
        """Apply the snapshot rows of the differing keys; return the keys that now agree."""
        updates = [
            Update(
                update_type=d.update_type,
                data=snapshots[d.update_type][d.key],
                source=SNAPSHOT,
                seq=next_seq(),
                received_at_us=started_us,
                account=account,
            )
            for d in {(d.update_type, d.key): d for d in discrepancies}.values()
            if d.key in snapshots.get(d.update_type, {})
        ]
        if updates:
            store.apply(updates, account=account)
        repaired: set[tuple[str, str]] = set()
        for update_type in {u.update_type for u in updates}:
            stored = store.read_stored_objects(account, update_type)
            still = {d.key for d in compare(update_type, stored, snapshots[update_type])}
            repaired |= {(update_type, u.key or "") for u in updates if u.update_type == update_type} - {
                (update_type, k) for k in still
            }
        return repaired


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _count_by(discrepancies: list[Discrepancy]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in discrepancies:
        name = f"{d.update_type}:{d.kind}"
        counts[name] = counts.get(name, 0) + 1
    return counts
