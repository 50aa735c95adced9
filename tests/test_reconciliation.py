"""The comparison at the heart of reconciliation (pure function, no Airflow, no database)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from airflow_provider_upstox import reconciliation
from airflow_provider_upstox.reconciliation import EXTRA, MISMATCH, MISSING, compare, index_rows
from airflow_provider_upstox.store import schema

TODAY = date(2025, 3, 3)


def order(order_id: str, status: str = "complete", filled: int = 1, day: str = "2025-03-03") -> dict:
    return {
        "order_id": order_id,
        "status": status,
        "filled_quantity": filled,
        "quantity": 1,
        "order_timestamp": f"{day} 10:00:00",
    }


def test_equal_is_clean_and_numbers_compare_as_numbers() -> None:
    db = {"1": {**order("1"), "filled_quantity": Decimal("1"), "status": "Complete "}}
    assert compare("order", db, {"1": order("1")}, today=TODAY) == []


def test_missing_extra_mismatch() -> None:
    db = {"1": order("1", "open", 0), "2": order("2"), "old": order("old", day="2025-03-01")}
    snap = {"1": order("1"), "3": order("3")}
    found = compare("order", db, snap, today=TODAY)
    kinds = {(d.key, d.kind, d.field) for d in found}
    assert kinds == {
        ("1", MISMATCH, "status"),
        ("1", MISMATCH, "filled_quantity"),
        ("2", EXTRA, None),
        ("3", MISSING, None),
    }


def test_closed_positions_are_not_extra_or_missing() -> None:
    pos = {"instrument_token": "NSE_EQ|X", "product": "D", "quantity": 0}
    assert compare("position", {"NSE_EQ|X:D": pos}, {}, today=TODAY) == []
    assert compare("position", {}, {"NSE_EQ|X:D": pos}, today=TODAY) == []
    open_pos = {**pos, "quantity": 3}
    (d,) = compare("position", {"NSE_EQ|X:D": open_pos}, {}, today=TODAY)
    assert d.kind == EXTRA


def test_gtt_rule_statuses() -> None:
    gtt = {"gtt_order_id": "G1", "rules": [{"strategy": "ENTRY", "status": "PENDING"}]}
    done = {"gtt_order_id": "G1", "rules": [{"strategy": "ENTRY", "status": "completed"}]}
    (d,) = compare("gtt_order", {"G1": gtt}, {"G1": done}, today=TODAY)
    assert (d.kind, d.field) == (MISMATCH, "rule_statuses")


def test_index_rows_skips_keyless() -> None:
    assert list(index_rows("holding", [{"isin": "INE1"}, {"quantity": 3}])) == ["INE1"]


def test_the_old_operators_module_re_exports_the_same_objects() -> None:
    from airflow_provider_upstox.operators import reconciliation as old

    assert (old.compare, old.Discrepancy, old.index_rows) == (
        reconciliation.compare,
        reconciliation.Discrepancy,
        reconciliation.index_rows,
    )
    assert (old.reconciliation_runs, old.reconciliation_discrepancies) == schema.RECONCILIATION_TABLES
