"""The Streams view's plain parts: joining, ordering, paging and escaping, without a server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow_provider_upstox.plugins import streams
from airflow_provider_upstox.plugins.status import TokenStatus
from airflow_provider_upstox.plugins.streams_page import age, streams_page

NOW = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)


def _token(conn_id: str, user: str = "AB1234") -> TokenStatus:
    return TokenStatus(conn_id, "unknown", user, None, "ab" * 8, 1_772_500_000_000, None, None, False, None)


def _row(conn_id: str, state: str, ago_s: float, **extra: object) -> dict[str, object]:
    at = NOW - timedelta(seconds=ago_s)
    row: dict[str, object] = dict.fromkeys(("error_kind", "error_at", "token_refused_since"))
    row.update(conn_id=conn_id, account="AB1234", consumer="task", state=state, connection_epoch=1,
               reconnects=0, messages=5, lag_ms=20.0, pending=0)  # fmt: skip
    row.update(dict.fromkeys(("state_since", "observed_at", "last_event_at", "last_message_at"), at))
    row.update(extra)
    return row


def test_join_orders_worst_first_and_hides_what_the_user_may_not_read() -> None:
    rows = [
        _row("c_ok", "connected", 5),
        _row("c_err", "error", 5, error_kind="stream", error_at=NOW),
        _row("c_gone", "connected", 5),  # its connection was deleted; readable
        _row("c_secret", "error", 5),  # a connection this user may not read
        _row("c_stale_new", "connected", 700),
        _row("c_stale_old", "idle", 900),
    ]
    tokens = [_token(c) for c in ("c_ok", "c_err", "c_stale_new", "c_stale_old", "c_never")]
    items = streams.build(rows, tokens, lambda c: c != "c_secret", NOW)
    assert [(i["conn_id"], i["health"]) for i in items] == [
        ("c_err", "error"),
        ("c_stale_old", "stale"),  # the oldest first within a label
        ("c_stale_new", "stale"),
        ("c_never", "no stream"),
        ("c_gone", "ok"),
        ("c_ok", "ok"),
    ]
    assert items[-2]["token"] is None
    assert streams.summary(items) == {"error": 1, "token refused": 0, "stale": 2, "lagging": 0,
                                      "no stream": 1, "stopped": 0, "ok": 2}  # fmt: skip
    page, total = streams.page_of(items, 1, 2, "problems")
    assert ([i["conn_id"] for i in page], total) == (["c_stale_old", "c_stale_new"], 4)
    assert streams.page_of(items, 0, 10**6, None)[0] == items  # the limit is capped, not refused


def test_every_value_is_escaped() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    rows = [_row("c1", "error", 5, account=hostile, error_kind=hostile, error_at=NOW)]
    items = streams.build(rows, [_token("c1")], lambda c: True, NOW)
    html = streams_page(items, streams.summary(items), total=1, offset=0, limit=50, only=hostile,
                        base_url="/upstox/streams", problem=hostile, stale_after_s=600)  # fmt: skip
    assert "<img" not in html
    assert html.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;") == 3  # account, error kind, notice


def test_ages_read_like_a_person_would_say_them() -> None:
    assert [age(None), age(4.2), age(75), age(7300), age(200000)] == ["-", "4 s ago", "1 min ago", "2 h ago",
                                                                      "2 d ago"]  # fmt: skip
