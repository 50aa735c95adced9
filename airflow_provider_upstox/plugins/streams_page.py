"""The HTML of the *Streams* page: server-rendered, no script, every value escaped.

A summary (connections per health label, each a filter link), then one row per connection, worst
first, paged. The page reloads itself every 30 seconds (``<meta http-equiv="refresh">``).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any
from urllib.parse import urlencode

from airflow_provider_upstox.plugins.page import _STYLE
from airflow_provider_upstox.plugins.status import format_ms
from airflow_provider_upstox.store import health

_STREAM_STYLE = """
.summary{display:flex;gap:8px;flex-wrap:wrap;margin:0 0 14px}
.chip{display:inline-block;padding:6px 12px;border-radius:8px;border:1px solid #e2e8f0;color:#1a202c;
text-decoration:none;font-size:13px}.chip b{font-size:16px;margin-right:4px}.chip.on{border-color:#017cee}
.h-error{background:#fed7d7;color:#822727}.h-token-refused{background:#fbd38d;color:#744210}
.h-stale{background:#feebc8;color:#7b341e}.h-lagging{background:#fefcbf;color:#744210}
.h-no-stream{background:#e2e8f0;color:#2d3748}.h-stopped{background:#e9d8fd;color:#44337a}.h-ok{background:#c6f6d5;color:#22543d}
table.streams td{white-space:nowrap} .badge{white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums} .pager{margin-top:12px;font-size:14px}
.pager a{margin-right:12px}
"""


def _css(label: str) -> str:
    return "h-" + label.replace(" ", "-")


def age(seconds: float | None) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 d`` ago (``-`` when unknown)."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _when(epoch_ms: int | None, age_s: float | None) -> str:
    if epoch_ms is None:
        return "-"
    return f'{escape(age(age_s))}<br><span class="muted">{escape(format_ms(epoch_ms))}</span>'


def _num(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return escape(f"{value:,.0f}{suffix}")
    return escape(f"{value:,}{suffix}")


def _state(item: Mapping[str, Any]) -> str:
    state = item["state"]
    if state is None:
        return '<span class="muted">never recorded</span>'
    text = escape(str(state).replace("_", " "))
    if item["consumer"]:
        text += f' <span class="muted">({escape(str(item["consumer"]))})</span>'
    if item["state_since"]:
        text += f'<br><span class="muted">since {escape(format_ms(item["state_since"]))}</span>'
    return text


def _token(item: Mapping[str, Any]) -> str:
    token = item["token"]
    if item["token_refused_since"]:
        return f"refused since<br>{escape(format_ms(item['token_refused_since']))}"
    if token is None:
        return '<span class="muted">no such connection</span>'
    if token["refused_since"]:
        return f"refused since<br>{escape(format_ms(token['refused_since']))}"
    return f"valid until<br>{escape(format_ms(token['valid_until']))}"


def _error(item: Mapping[str, Any]) -> str:
    if not item["error_kind"]:
        return "-"
    when = escape(format_ms(item["error_at"]))
    return f'{escape(str(item["error_kind"]))}<br><span class="muted">{when}</span>'


def _row(item: Mapping[str, Any]) -> str:
    label = str(item["health"])
    return (
        f'<tr data-conn-id="{escape(item["conn_id"], quote=True)}" data-health="{escape(label, quote=True)}">'
        f"<td><code>{escape(item['conn_id'])}</code></td><td>{escape(item['account'] or '-')}</td>"
        f'<td><span class="badge {_css(label)}">{escape(label)}</span></td><td>{_state(item)}</td>'
        f"<td>{_when(item['last_message_at'], item['last_message_age_s'])}</td>"
        f"<td>{_when(item['last_event_at'], item['last_event_age_s'])}</td>"
        f'<td class="num">{_num(item["reconnects"])}</td><td class="num">{_num(item["lag_ms"], " ms")}</td>'
        f'<td class="num">{_num(item["pending"])}</td><td>{_token(item)}</td><td>{_error(item)}</td></tr>'
    )


def streams_page(
    items: list[dict[str, Any]],
    counts: Mapping[str, int],
    *,
    total: int,
    offset: int,
    limit: int,
    only: str | None,
    base_url: str,
    problem: str | None,
    stale_after_s: float,
) -> str:
    def link(**params: Any) -> str:
        query = {k: v for k, v in {"only": only, "limit": limit, **params}.items() if v not in (None, "")}
        return escape(f"{base_url}?{urlencode(query)}", quote=True)

    chips = [f'<a class="chip{" on" if not only else ""}" href="{link(only="", offset=0)}"><b>'
             f"{sum(counts.values())}</b>all</a>"]  # fmt: skip
    chips.append(
        f'<a class="chip{" on" if only == "problems" else ""}" href="{link(only="problems", offset=0)}">'
        f"<b>{sum(n for k, n in counts.items() if k not in health.FINE)}</b>need attention</a>"
    )
    for label, n in counts.items():
        on = " on" if only == label else ""
        href = link(only=label, offset=0)
        chips.append(f'<a class="chip {_css(label)}{on}" href="{href}"><b>{n}</b>{escape(label)}</a>')
    body = [_row(i) for i in items] or ['<tr><td colspan="11" class="muted">No stream to show.</td></tr>']
    pager = [f"Rows {offset + 1 if items else 0} to {offset + len(items)} of {total}."]
    if offset > 0:
        pager.append(f'<a href="{link(offset=max(0, offset - limit))}">previous {limit}</a>')
    if offset + len(items) < total:
        pager.append(f'<a href="{link(offset=offset + limit)}">next {limit}</a>')
    notice = f'<p class="box refused">{escape(problem)}</p>' if problem else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Upstox streams</title>
<meta http-equiv="refresh" content="30"><style>{_STYLE}{_STREAM_STYLE}</style></head><body>
<h1>Upstox streams</h1>
<p class="lead">The portfolio stream of every Upstox connection, as its operator last recorded it; accounts
that need attention first. Stale: nothing recorded for {int(stale_after_s)} s.</p>{notice}
<div class="summary">{"".join(chips)}</div>
<table class="streams"><thead><tr><th>Connection</th><th>Account</th><th>Health</th><th>Stream</th>
<th>Last message</th><th>Last event</th><th>Reconnects</th><th>Lag</th><th>Buffered</th><th>Token</th>
<th>Last error</th>
</tr></thead>
<tbody>
{"".join(body)}
</tbody></table>
<p class="pager">{" ".join(pager)}</p>
</body></html>"""
