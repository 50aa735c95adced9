"""Realistic Upstox order histories and update builders for the store tests.

An order moves through the documented statuses with one-second timestamps (several states often
share a second), partial fills, modify and failed-cancel round trips (each a new
``order_request_id``) and one terminal state (or none: still open). ``timeline()`` interleaves
several orders' live messages with REST snapshots (source ``snapshot``, ``received_at`` = when the
snapshot request began, emitted after live messages that arrived meanwhile) and stream duplicates.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from airflow_provider_upstox.models.updates import Update

BASE_RECEIVED_US = 1_708_500_000_000_000  # 2024-02-21, epoch µs
FMT = "%Y-%m-%d %H:%M:%S"


def order_message(order_id: str, **fields: Any) -> dict[str, Any]:
    """An order message shaped like the example of ``docs/PROTOCOL.md`` §2."""
    data: dict[str, Any] = {
        "update_type": "order",
        "user_id": "AB1234",
        "exchange": "NSE",
        "instrument_token": "NSE_EQ|INE848E01016",
        "instrument_key": "NSE_EQ|INE848E01016",
        "trading_symbol": "NHPC-EQ",
        "product": "D",
        "order_type": "LIMIT",
        "average_price": 0,
        "price": 92.95,
        "trigger_price": 0,
        "quantity": 10,
        "disclosed_quantity": 0,
        "pending_quantity": 10,
        "transaction_type": "BUY",
        "order_ref_id": "57744821658411",
        "exchange_order_id": "",
        "parent_order_id": None,
        "validity": "DAY",
        "status": "put order req received",
        "is_amo": False,
        "variety": "SIMPLE",
        "tag": "stratégie-1",
        "exchange_timestamp": None,
        "status_message": "",
        "order_id": order_id,
        "order_request_id": "1",
        "order_timestamp": "2024-02-21 14:40:02",
        "filled_quantity": 0,
        "guid": None,
        "placed_by": "AB1234",
        "status_message_raw": None,
    }
    data.update(fields)
    return data


@st.composite
def order_history(draw: st.DrawFn, order_id: str) -> list[dict[str, Any]]:
    """The true sequence of states (data dicts) of one order."""
    clock = datetime(2024, 2, 21, 9, 15, 0) + timedelta(seconds=draw(st.integers(0, 5)))
    placed = clock
    qty = draw(st.integers(2, 50))
    st_: dict[str, Any] = {"filled": 0, "req": 1, "exch": None, "avg": 0.0}
    states: list[dict[str, Any]] = []

    def tick() -> None:
        nonlocal clock
        clock += timedelta(seconds=draw(st.sampled_from([0, 0, 1, 2])))

    def emit(status: str) -> None:
        states.append(
            order_message(
                order_id,
                status=status,
                quantity=qty,
                filled_quantity=st_["filled"],
                pending_quantity=qty - st_["filled"],
                order_request_id=str(st_["req"]),
                order_timestamp=placed.strftime(FMT),
                exchange_timestamp=st_["exch"].strftime(FMT) if st_["exch"] else None,
                average_price=st_["avg"],
                exchange_order_id="1300000012345678" if st_["exch"] else "",
            )
        )

    def at_exchange() -> None:
        tick()
        st_["exch"] = clock

    ending = draw(st.sampled_from(["complete", "cancelled", "rejected", "open", "amo"]))
    if ending == "amo":
        emit("after market order req received")
        tick()
        emit("cancelled after market order")
        return states
    emit("put order req received")
    tick()
    emit("validation pending")
    if ending == "rejected":
        tick()
        emit("rejected")
        return states
    tick()
    emit("open pending")
    at_exchange()
    if draw(st.booleans()):
        emit("trigger pending")
        at_exchange()
    emit("open")
    for action in draw(st.lists(st.sampled_from(["fill", "modify", "cancel_refused"]), max_size=3)):
        if action == "fill" and st_["filled"] < qty - 1:
            at_exchange()
            st_["filled"] += draw(st.integers(1, qty - 1 - st_["filled"]))
            st_["avg"] = 92.9 + st_["filled"] / 1000
            emit("open")
        elif action == "modify":
            st_["req"] += 1
            emit("modify validation pending")
            tick()
            emit("modify pending")
            at_exchange()
            emit(draw(st.sampled_from(["modified", "not modified"])))
            emit("open")
        elif action == "cancel_refused":
            st_["req"] += 1
            emit("cancel pending")
            at_exchange()
            emit("not cancelled")
            emit("open")
    if ending == "complete":
        at_exchange()
        st_["filled"] = qty
        st_["avg"] = 92.95
        emit("complete")
    elif ending == "cancelled":
        st_["req"] += 1
        emit("cancel pending")
        at_exchange()
        emit("cancelled")
    return states


@st.composite
def timeline(draw: st.DrawFn, max_orders: int = 3) -> tuple[list[Update], dict[str, dict[str, Any]]]:
    """Live messages of 1..max_orders orders in true arrival order, with snapshots and duplicates.

    :returns: (updates in true order, the true final state of each order).
    """
    n = draw(st.integers(1, max_orders))
    histories = {f"24022102599{i:04d}": draw(order_history(f"24022102599{i:04d}")) for i in range(n)}
    cursors = dict.fromkeys(histories, 0)
    updates: list[Update] = []
    clock = {"us": BASE_RECEIVED_US, "seq": 1_000}

    def stamp() -> tuple[int, int]:
        clock["us"] += draw(st.integers(1, 2_000_000))
        clock["seq"] += draw(st.integers(1, 1000))
        return clock["us"], clock["seq"]

    pending_snapshot: list[tuple[str, dict[str, Any]]] | None = None
    snapshot_started = 0
    while any(cursors[o] < len(h) for o, h in histories.items()):
        choice = draw(st.sampled_from(["live", "live", "live", "dup", "snap_start", "snap_end"]))
        if choice == "snap_start" and pending_snapshot is None:
            snapshot_started, _ = stamp()
            # The REST read happens during the request: it may already show the next state.
            pending_snapshot = []
            for oid, hist in histories.items():
                seen = cursors[oid] - 1 + draw(st.integers(0, 1))
                if 0 <= seen < len(hist):
                    pending_snapshot.append((oid, hist[seen]))
        elif choice == "snap_end" and pending_snapshot is not None:
            for _oid, data in pending_snapshot:
                _, seq = stamp()
                updates.append(
                    Update(
                        update_type="order",
                        data=data,
                        source="snapshot",
                        seq=seq,
                        received_at_us=snapshot_started,
                    )
                )
            pending_snapshot = None
        elif choice == "dup" and updates:
            previous = draw(
                st.sampled_from([u for u in updates[-5:] if u.source == "stream"] or updates[-1:])
            )
            recv, seq = stamp()
            updates.append(
                Update(
                    update_type="order",
                    data=previous.data,
                    source=previous.source,
                    seq=seq,
                    received_at_us=max(recv, previous.received_at_us),
                )
            )
        else:
            live = [o for o, h in histories.items() if cursors[o] < len(h)]
            oid = draw(st.sampled_from(live))
            recv, seq = stamp()
            updates.append(
                Update(
                    update_type="order",
                    data=histories[oid][cursors[oid]],
                    seq=seq,
                    received_at_us=recv,
                    connection_epoch=1,
                )
            )
            cursors[oid] += 1
    return updates, {oid: hist[-1] for oid, hist in histories.items()}
