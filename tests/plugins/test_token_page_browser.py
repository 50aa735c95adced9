"""The *Upstox tokens* page in real headless Chromium: token states, then a full OAuth login.

Skipped without Chromium, except under ``CI=true`` (like the connection form test). Screenshots go
to ``docs/screenshots/`` when UPSTOX_UPDATE_SCREENSHOTS=1, otherwise to a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from airflow_provider_upstox.simulator import RunningSimulator
from tests.plugins.conftest import ENV_CONN_ID, PluginServer, approve_by_phone, sim_auth, sim_control
from tests.ui.cdp import chromium_page, find_chromium

pytestmark = [pytest.mark.airflow_server, pytest.mark.timeout(300)]

SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("UPSTOX_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="upstox-screenshots-"))
)


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (CI must `apt-get install -y chromium`)")
        pytest.skip("chromium is not installed")
    return path


def _row_text(conn_id: str) -> str:
    return f"(document.querySelector('tr[data-conn-id=\"{conn_id}\"]') || {{}}).innerText || ''"


def test_page_shows_token_states_and_logs_in(
    plugin_server: PluginServer, app_simulator: RunningSimulator, browser: str
) -> None:
    sim = app_simulator
    plugin_server.add_connection("upstox_main", sim, sim.token)
    plugin_server.add_connection("upstox_second", sim, "expired-token-" + "e" * 20, user_id="CD5678")
    # a phone approval gives the first connection a renewal record (source, valid until)
    assert approve_by_phone(sim)["status"] == 200
    with chromium_page(browser) as page:
        page.navigate(f"{plugin_server.base_url}/upstox/tokens")
        page.wait_for("document.querySelectorAll('tr[data-conn-id]').length >= 3", 60)
        main = page.evaluate(_row_text("upstox_main"))
        assert "valid" in main
        assert "AB1234" in main
        assert "notifier" in main
        assert "IST" in main  # valid until
        assert "Log in to Upstox" in main
        second = page.evaluate(_row_text("upstox_second"))
        assert "refused" in second
        assert "CD5678" in second
        assert "IST" in second  # refused since
        env_row = page.evaluate(_row_text(ENV_CONN_ID))
        assert "read-only" in env_row
        body = page.body_text()
        assert "/upstox/notifier/" in body
        assert sim.token not in page.evaluate("document.documentElement.outerHTML")
        page.screenshot(SCREENSHOTS / "upstox-tokens-page.png")

        # inside Airflow's UI: the nav entry shows the page in a frame
        page.navigate(f"{plugin_server.base_url}/plugin/upstox-tokens")
        page.wait_for(
            "(() => { const f = document.querySelector('iframe');"
            " return !!(f && f.contentDocument && f.contentDocument.querySelector('tr[data-conn-id]')) })()",
            90,
        )
        page.screenshot(SCREENSHOTS / "upstox-tokens-in-airflow.png")

        # the login: the button leaves for Upstox's dialog, which comes back to the callback
        page.navigate(f"{plugin_server.base_url}/upstox/tokens")
        page.wait_for("!!document.querySelector('button[data-conn=\"upstox_main\"]')", 30)
        page.evaluate("document.querySelector('button[data-conn=\"upstox_main\"]').click()")
        page.wait_for("document.body && document.body.innerText.includes('Token renewed')", 60)
        assert "upstox_main now holds a token for AB1234" in page.body_text()
        page.screenshot(SCREENSHOTS / "upstox-login-done.png")
    after = plugin_server.state("upstox_main")
    assert after["fingerprint"] == sim_auth(sim)["token_fingerprint"]
    assert after["source"] == "oauth"
    sim_control(sim, "expire")
