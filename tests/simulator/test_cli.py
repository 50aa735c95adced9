"""``python -m airflow_provider_upstox.simulator``: serves, and never logs the token in full."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def test_cli_serves_and_masks_the_token() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "cli-secret-token-0123456789"
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_upstox.simulator", "--port", str(port), "--token", token,
         "--seed", "4", "--scenario", "busy", "--log-level", "DEBUG"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/v2/feed/portfolio-stream-feed/authorize",
                    headers={"Authorization": f"Bearer {token}"},
                    trust_env=False,
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.1)
        assert r.status_code == 200
        code_url = r.json()["data"]["authorized_redirect_uri"]
        assert httpx.get(f"http://127.0.0.1:{port}/_sim/state", trust_env=False).json()["market"]["seed"] == 4
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "cli-***" in output
    assert token not in output
    assert code_url.split("code=")[1] not in output
