"""The HTML of the plugin page and of the login result: server-rendered, no script, every value escaped."""

from __future__ import annotations

from html import escape

from airflow_provider_upstox.plugins.status import TokenStatus, format_ms

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a202c}
h1{font-size:22px;margin:0 0 4px} p.lead{color:#4a5568;margin:0 0 18px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:8px 10px;border-bottom:1px solid #e2e8f0;vertical-align:top}
th{background:#f7fafc;font-weight:600}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600}
.valid{background:#c6f6d5;color:#22543d}.refused{background:#fed7d7;color:#822727}
.unreachable,.unknown{background:#feebc8;color:#7b341e}.none{background:#e2e8f0;color:#2d3748}
button{background:#017cee;color:#fff;border:0;border-radius:6px;padding:6px 12px;cursor:pointer}
.muted{color:#718096;font-size:12px} code{background:#edf2f7;padding:1px 4px;border-radius:4px}
.box{background:#f7fafc;border:1px solid #e2e8f0;border-radius:8px;padding:12px 14px;margin-top:18px}
"""


def _badge(state: str) -> str:
    css = {"valid": "valid", "refused": "refused", "unreachable": "unreachable"}.get(state, "none")
    return f'<span class="badge {css}">{escape(state)}</span>'


def _action(row: TokenStatus, can_edit: bool, prefix: str) -> str:
    if row.read_only_reason:
        return f'<span class="muted">read-only: {escape(row.read_only_reason)}</span>'
    if not can_edit:
        return '<span class="muted">you may not edit this connection</span>'
    if not row.can_renew_by_app:
        return '<span class="muted">add the app\'s API key and secret to the connection to log in</span>'
    action = f"{prefix}/oauth/start/{escape(row.conn_id, quote=True)}"
    return (
        f'<form method="post" action="{action}" target="_top">'
        f'<button type="submit" data-conn="{escape(row.conn_id, quote=True)}">Log in to Upstox</button>'
        "</form>"
    )


def tokens_page(
    rows: list[TokenStatus], editable: set[str], prefix: str, callback_url: str, notifier_url: str | None
) -> str:
    body = []
    for row in rows:
        user = row.user_id or "-"
        if row.expected_user and row.user_id and row.expected_user != row.user_id:
            user += f' <span class="muted">(expected {escape(row.expected_user)})</span>'
        elif not row.user_id and row.expected_user:
            user = f'{escape(row.expected_user)} <span class="muted">(expected)</span>'
        else:
            user = escape(user)
        body.append(
            f'<tr data-conn-id="{escape(row.conn_id, quote=True)}">'
            f"<td><code>{escape(row.conn_id)}</code></td><td>{user}</td>"
            f"<td>{_badge(row.state)}</td><td>{format_ms(row.valid_until)}</td>"
            f"<td>{format_ms(row.refused_since)}</td>"
            f"<td>{escape(row.source or 'pasted / unknown')}</td>"
            f"<td>{_action(row, row.conn_id in editable, prefix)}</td></tr>"
        )
    if not body:
        body.append('<tr><td colspan="7" class="muted">No connection of type upstox.</td></tr>')
    notifier = (
        f"<p>Notifier webhook (phone approval): <code>{escape(notifier_url)}</code></p>"
        if notifier_url
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Upstox tokens</title>
<style>{_STYLE}</style></head><body>
<h1>Upstox tokens</h1>
<p class="lead">Every Upstox access token dies at 03:30 India time. Renew here, or approve the daily
request on your phone (DAG <code>upstox_token_renewal</code>); running streams pick the new token up.</p>
<table><thead><tr><th>Connection</th><th>User id</th><th>Token</th><th>Valid until</th>
<th>Refused since</th><th>Source</th><th></th></tr></thead><tbody>
{"".join(body)}
</tbody></table>
<div class="box"><p>Redirect URI to register for your Upstox app (OAuth login):
<code>{escape(callback_url)}</code></p>{notifier}</div>
</body></html>"""


def result_page(title: str, message: str, back_url: str, ok: bool) -> str:
    colour = "#22543d" if ok else "#822727"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1 style="color:{colour}">{escape(title)}</h1><p>{escape(message)}</p>
<p><a href="{escape(back_url, quote=True)}">Back to Upstox tokens</a></p></body></html>"""
