"""What both demo modes share: the simulator process, the work directory and Airflow's settings."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]


def say(message: str) -> None:
    """One line of progress, flushed at once (the user is watching a terminal or a pipe)."""
    print(f"demo: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Demo:
    """The demo's work directory and the local Upstox it talks to."""

    work: Path
    base_url: str
    token: str

    @property
    def home(self) -> Path:
        return self.work / "airflow"

    @property
    def store_file(self) -> Path:
        return self.work / "portfolio.db"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def control(self) -> httpx.Client:
        """A client of the simulator's control API (``/_sim/...``: market, state)."""
        return httpx.Client(base_url=self.base_url, timeout=30)

    def connections(self) -> dict[str, dict[str, Any]]:
        """``upstox_default`` -> the simulator, ``upstox_db`` -> the SQLite store file."""
        return {
            "upstox_default": {"conn_type": "upstox", "password": self.token, "host": self.base_url},
            "upstox_db": {"conn_type": "sqlite", "host": str(self.store_file)},
        }

    def airflow_env(self, **settings: str) -> dict[str, str]:
        """Environment for every Airflow process: its own home, SQLite metadata DB, the example DAGs."""
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "airflow"),
            "UPSTOX_MAX_BATCH_WAIT": "0.5",
        }
        env.update(settings)
        return env

    def store_counts(self) -> tuple[int, int]:
        """(orders in the store, orders the simulator has sent); the store may not exist yet."""
        stored = 0
        if self.store_file.exists():
            engine = sa.create_engine(f"sqlite:///{self.store_file}", poolclass=sa.pool.NullPool)
            try:
                with engine.connect() as conn:
                    stored = conn.execute(sa.text("SELECT COUNT(*) FROM upstox_orders")).scalar_one()
            except sa.exc.OperationalError:  # no table yet, or busy
                pass
            finally:
                engine.dispose()
        with self.control() as control:
            sent = len(control.get("/_sim/state").json()["orders"])
        return int(stored), sent


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the simulator exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=2)
            return
        time.sleep(0.2)
    raise SystemExit(f"the simulator did not answer at {url}")


@contextlib.contextmanager
def running_simulator(work: Path) -> Iterator[Demo]:
    """The local Upstox (``python -m airflow_provider_upstox.simulator``) on a free port, random token."""
    token, port = f"demo-{secrets.token_urlsafe(16)}", free_port()
    demo = Demo(work=work, base_url=f"http://127.0.0.1:{port}", token=token)
    demo.logs.mkdir(parents=True, exist_ok=True)
    (demo.home).mkdir(parents=True, exist_ok=True)
    log_path = demo.logs / "simulator.log"
    with log_path.open("wb") as log:
        sim = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_upstox.simulator", "--host", "127.0.0.1",
             "--port", str(port), "--token", token, "--seed", "7", "--scenario", "quiet"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_http(f"{demo.base_url}/_sim/state", sim, log_path)
        yield demo
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait(timeout=10)


def airflow_cli(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``airflow <args>`` to completion, killed with SIGKILL on timeout (``dags test`` ignores SIGTERM).

    :raises SystemExit: a non-zero exit, with the end of its output.
    """
    cmd = ["timeout", "-s", "KILL", str(timeout), sys.executable, "-m", "airflow", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write((proc.stdout + proc.stderr)[-6000:])
        raise SystemExit(f"airflow {' '.join(args[:3])} failed (exit code {proc.returncode})")
    return proc


def write_connections(demo: Demo, path: Path) -> Path:
    """The demo's connections as a file for ``airflow connections import`` (shown in the UI)."""
    path.write_text(json.dumps(demo.connections(), indent=2))
    return path
