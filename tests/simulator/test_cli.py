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


def test_extra_accounts_get_distinct_tokens_of_a_real_upstox_tokens_shape() -> None:
    """HS256 JWTs sharing Upstox's header and claim names: what Airflow's secrets masker costs with
    many accounts depends on that shape (see ``account_token``)."""
    import base64
    import json

    from airflow_provider_upstox.simulator.__main__ import JWT_HEADER, extra_accounts

    accounts = extra_accounts("primary-token", 50)
    assert len(accounts) == 49
    assert len(set(accounts.values())) == 49
    for token, user_id in accounts.items():
        header, body, signature = token.split(".")
        assert header == JWT_HEADER
        assert json.loads(base64.urlsafe_b64decode(header + "==")) == {
            "typ": "JWT",
            "key_id": "sk_v1.0",
            "alg": "HS256",
        }
        claims = json.loads(base64.urlsafe_b64decode(body + "=="))
        assert claims["sub"] == user_id
        assert claims["exp"] > claims["iat"]
        assert len(base64.urlsafe_b64decode(signature + "=")) == 32
        assert 280 <= len(token) <= 340
    assert extra_accounts("primary-token", 3) == dict(list(accounts.items())[:2])  # deterministic
