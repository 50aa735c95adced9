"""The simulator's own HTTP request parser (``simulator/request_body.py``), over raw loopback sockets.

It replaces the one of ``websockets``, which refuses bodies and, before websockets 17 (the newest
release on Python 3.10 is 16), every method but ``GET``. The last test runs the simulator and the
stream client on those older ``websockets`` releases, so CI guards Python 3.10 users without a
Python 3.10 install.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_upstox.simulator import RunningSimulator
from airflow_provider_upstox.simulator.auth import BAD_CODE

REPO = Path(__file__).resolve().parents[2]


def exchange(sim: RunningSimulator, raw: bytes) -> bytes:
    """Send *raw* as it is; everything the simulator answers until it closes (``b""``: it hung up)."""
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_every_method_reaches_the_router(simulator: RunningSimulator, method: str) -> None:
    answer = exchange(
        simulator, f"{method} /_sim/market HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    expected = 200 if method == "POST" else 400  # the control API's own refusal, not the parser's
    assert status(answer) == expected, answer


def test_a_body_is_read_and_http_1_0_is_answered(simulator: RunningSimulator) -> None:
    body = b"code=nope&client_id=sim-client-id&client_secret=sim-client-secret&grant_type=authorization_code"
    head = f"POST /v2/login/authorization/token HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n"
    answer = exchange(simulator, head.encode() + body)
    assert answer.startswith(b"HTTP/1.1 ")
    # The form was read: the app's credentials passed (401 without them), only the code is unknown.
    assert status(answer) == 400, answer
    assert BAD_CODE[0].encode() in answer


@pytest.mark.parametrize(
    "raw",
    [
        b"get /_sim/state HTTP/1.1\r\n\r\n",  # methods are upper case
        b"GET /_sim/state\r\n\r\n",  # no protocol
        b"GET /_sim/state HTTP/2.0\r\n\r\n",
        "GET /_sim/st\u00e4te HTTP/1.1\r\n\r\n".encode(),  # a path must be ASCII
        b"POST /_sim/market HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        b"POST /_sim/market HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /_sim/market HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_a_malformed_request_is_dropped(simulator: RunningSimulator, raw: bytes) -> None:
    assert exchange(simulator, raw) == b""
    assert simulator.control.counters()["http_requests"] == 1  # only the counters call got through


def test_a_body_over_the_limit_gets_413(simulator: RunningSimulator) -> None:
    answer = exchange(simulator, b"POST /_sim/market HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
    assert status(answer) == 413


def _declared_websockets_floor() -> str:
    pyproject = (REPO / "pyproject.toml").read_text()
    found = re.search(r'"websockets>=([0-9.]+)[,"]', pyproject)
    assert found, "pyproject.toml declares no websockets lower bound"
    return found.group(1)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(f"=={_declared_websockets_floor()}", id="declared-floor"),
        pytest.param("==16.*", id="newest-on-python-3.10"),  # websockets 17 requires Python 3.11
    ],
)
def test_simulator_and_stream_client_on_older_websockets(spec: str) -> None:
    """``tests/simulator/websockets_smoke.py`` with that ``websockets`` first on ``sys.path``.

    Installed once (``pip install --target``, a single pure-Python-or-wheel package, no
    dependencies) into the virtualenv, then reused.
    """
    target = Path(sys.prefix) / "websockets-compat" / spec.strip("=*").rstrip(".")
    if not (target / "websockets" / "__init__.py").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                f"websockets{spec}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-m", "tests.simulator.websockets_smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    version = spec.strip("=*").rstrip(".")
    assert re.search(rf"^websockets {re.escape(version)}[.0-9]*: ok \(\d+ updates\)$", done.stdout, re.M), (
        done.stdout
    )
