"""The Upstox connection form as a user sees it: real api-server, headless Chromium.

Skipped when no Chromium is installed, except under ``CI=true`` where it fails (CI installs Debian's
``chromium`` package). Screenshots go to ``docs/screenshots/`` for the README when
UPSTOX_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.ui.cdp import Page, chromium_page, find_chromium

pytestmark = [pytest.mark.airflow_server, pytest.mark.timeout(420)]

# The README's screenshots are refreshed only on request (UPSTOX_UPDATE_SCREENSHOTS=1), so that a
# test run does not dirty the work tree; otherwise they go to a temporary folder.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("UPSTOX_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="upstox-screenshots-"))
)
DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (CI must `apt-get install -y chromium`)")
        pytest.skip("chromium is not installed")
    return path


def _click_button(page: Page, text: str) -> None:
    page.wait_for(
        f"Array.from(document.querySelectorAll('button')).some(b => b.innerText.trim() === {text!r})", 60
    )
    page.evaluate(
        f"Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === {text!r}).click()"
    )


def test_add_connection_form_shows_upstox_fields(airflow_env, browser: str) -> None:
    with airflow_env.api_server(log_name="api-server-ui") as base_url, chromium_page(browser) as page:
        page.navigate(f"{base_url}/connections")
        _click_button(page, "Add Connection")
        page.wait_for("!!document.querySelector('input[role=combobox]')", 30)
        page.evaluate("document.querySelector('input[role=combobox]').focus()")
        page.insert_text("Upstox")
        options = page.wait_for(
            "(() => { const o = Array.from(document.querySelectorAll('[role=option]')).map(e => e.innerText);"
            " return o.length ? o : null })()",
            15,
        )
        assert "Upstox" in options
        page.press("Enter")
        page.wait_for("document.body.innerText.includes('Access token')", 15)
        text = page.body_text()
        assert "Base URL" in text
        assert "Access token" in text
        # Hidden standard fields must not be offered.
        for hidden in ("Login", "Schema", "Port"):
            assert f"\n{hidden}\n" not in text
        placeholder = page.evaluate(
            "Array.from(document.querySelectorAll('input')).map(i => i.placeholder).join('|')"
        )
        assert "https://api.upstox.com" in placeholder
        # The access token is a password input (masked).
        assert page.evaluate("document.querySelectorAll('input[type=password]').length") >= 1
        page.evaluate(
            "Array.from(document.querySelectorAll('input[name=connection_id]'))[0] && "
            "(() => { const i = document.querySelector('input[name=connection_id]');"
            " const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;"
            " set.call(i, 'upstox_default'); i.dispatchEvent(new Event('input', {bubbles: true})); })()"
        )
        page.screenshot(SCREENSHOTS / "connection-form.png")

        page.click_button("Extra Fields")
        page.wait_for("document.body.innerText.toLowerCase().includes('update types')", 15)
        extra = page.body_text().lower()
        assert "update types" in extra
        assert "timeout" in extra
        assert "verify tls" in extra
        # token renewal (issue 16): the app's key and secret, redirect URI, expected account
        for label in (
            "api key (client_id)",
            "api secret (client_secret)",
            "redirect uri",
            "expected upstox user id",
        ):
            assert label in extra, label
        # the access token and the app secret are both password inputs (masked)
        assert page.evaluate("document.querySelectorAll('input[type=password]').length") >= 2
        time.sleep(0.5)
        page.screenshot(SCREENSHOTS / "connection-form-extra.png")


def test_dags_page_lists_the_example_dags(airflow_env, browser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR)}
    airflow_env.run("dags", "reserialize", extra_env=env, timeout=240)
    with (
        airflow_env.api_server(log_name="api-server-ui-dags", extra_env=env) as base_url,
        chromium_page(browser) as page,
    ):
        page.navigate(f"{base_url}/dags")
        page.wait_for("document.body.innerText.includes('upstox_portfolio_stream')", 60)
        text = page.body_text()
        for dag_id in (
            "upstox_portfolio_stream", "upstox_portfolio_events", "upstox_reconcile", "upstox_token_renewal",
        ):  # fmt: skip
            assert dag_id in text
        time.sleep(1)
        page.screenshot(SCREENSHOTS / "dags-list.png")
