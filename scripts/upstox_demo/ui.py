"""``demo.sh --ui``: Airflow with its web UI, the event-driven DAG streaming into SQLite, until Ctrl-C.

Separate processes, each in its own process group so that one signal reaches its workers too:
``api-server`` (UI and the execution API), ``scheduler`` (LocalExecutor), ``triggerer`` (runs the
AssetWatcher's stream trigger) and ``dag-processor``. The connections are imported into the metadata
database (not environment variables) so that the UI lists them. The simple auth manager makes every
visitor an admin: no login, and the server listens on 127.0.0.1 only.

Ctrl-C (SIGINT), SIGTERM or SIGHUP stops every process group it started, SIGKILL after a grace
period, then sweeps any process of this user still running with this demo's ``AIRFLOW_HOME``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from upstox_demo.common import Demo, airflow_cli, free_port, port_is_free, say, write_connections

EVENTS_DAG = "upstox_portfolio_events"
STACK = ("scheduler", "triggerer", "dag-processor")
GRACE_SECONDS = 20


class Stop(Exception):
    """A stop signal arrived."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


class Processes:
    """The Airflow processes of the demo, each the leader of its own process group."""

    def __init__(self, demo: Demo, env: dict[str, str]) -> None:
        self.demo, self.env = demo, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        with (self.demo.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name, *args],
                env=self.env, cwd=self.demo.home, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def check(self) -> None:
        """:raises SystemExit: one of them exited (with the end of its log)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.demo.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"airflow {name} exited ({proc.returncode}); end of its log:\n{tail}")

    def stop(self) -> None:
        """SIGTERM each leader (API server last), SIGKILL each group after the grace period.

        Only the leaders get SIGTERM: each shuts its own children down in order (the triggerer's
        supervisor tells its trigger runner, the scheduler its executor's workers); a SIGTERM to a
        whole group would hit those children mid-protocol and stall the shutdown.
        """
        order = list(reversed(self.procs.items()))
        for _, proc in order:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, proc in order:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"airflow {name} did not stop within {GRACE_SECONDS} s of SIGTERM: killing it")
        for _, proc in order:  # the leader may be gone while its workers still run
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _sweep(self.demo.home)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _sweep(home: Path) -> None:
    """SIGKILL processes of this user that still carry this demo's AIRFLOW_HOME (Linux /proc only).

    A task runner that started a session of its own would escape the process-group signals.
    """
    marker = f"AIRFLOW_HOME={home}".encode()
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == os.getuid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)


def _metadata(home: Path, sql: str, *params: str) -> list[tuple[object, ...]]:
    """A read-only query of the metadata DB; empty while it is locked or not ready."""
    uri = f"file:{home / 'airflow.db'}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=2)) as db:
            return db.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []


def _wait_until(what: str, procs: Processes, ready: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        procs.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen within {timeout:.0f} s (logs: {procs.demo.logs})")
        time.sleep(1)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run(demo: Demo, *, port: int | None, rate: float, status_every: float = 15) -> int:
    port = port or (8080 if port_is_free(8080) else free_port())
    base_url = f"http://127.0.0.1:{port}"
    env = demo.airflow_env(
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__API__BASE_URL=base_url,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base_url}/execution/",
        # every process must agree on these (separately started processes)
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
        AIRFLOW__API__SECRET_KEY=secrets.token_hex(32),
        AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="1",
        AIRFLOW__CORE__PARALLELISM="4",
        # the log servers of task workers and the triggerer (fixed 8793/8794 by default, on every
        # interface): free ports, so that another Airflow on this machine does not collide
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
    )
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    procs = Processes(demo, env)
    try:
        say(f"preparing Airflow's metadata database (SQLite) in {demo.home}")
        airflow_cli(env, "db", "migrate")
        connections = write_connections(demo, demo.work / "connections.json")
        airflow_cli(env, "connections", "import", str(connections))
        say(f"starting the Airflow API server and UI on {base_url}, scheduler, triggerer, dag-processor")
        procs.start("api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
        for name in STACK:
            procs.start(name)
        health = f"{base_url}/api/v2/monitor/health"
        _wait_until("the API server answering", procs, lambda: _healthy(health), 180)
        _wait_until(
            f"{EVENTS_DAG} being parsed", procs,
            lambda: _metadata(demo.home, "SELECT 1 FROM dag WHERE dag_id = ?", EVENTS_DAG), 180,
        )  # fmt: skip
        airflow_cli(env, "dags", "unpause", EVENTS_DAG)
        with demo.control() as control:
            control.post("/_sim/market", params={"running": True, "rate": rate}).raise_for_status()
        say(f"market open; {EVENTS_DAG} is unpaused and streams the simulator's updates into SQLite")
        print(
            f"\n  Airflow UI:   {base_url}/dags/{EVENTS_DAG}\n"
            "  login:        none needed (demo auth: every visitor is admin; listens on 127.0.0.1 only)\n"
            f"  watch:        DAG runs of {EVENTS_DAG}, Assets > upstox_events__upstox_default,\n"
            "                Admin > Connections > upstox_default; trigger upstox_reconcile to compare\n"
            f"  store:        {demo.store_file} (SQLite)\n"
            f"  logs:         {demo.logs}\n"
            "  stop:         Ctrl-C (stops every process the demo started)\n",
            flush=True,
        )
        next_status = time.monotonic() + status_every
        while True:
            procs.check()
            if time.monotonic() >= next_status:
                next_status += status_every
                stored, sent = demo.store_counts()
                runs = _metadata(demo.home, "SELECT COUNT(*) FROM dag_run WHERE dag_id = ?", EVENTS_DAG)
                events = _metadata(demo.home, "SELECT COUNT(*) FROM asset_event")
                say(
                    f"{stored} of {sent} orders stored; {runs[0][0] if runs else '?'} runs of {EVENTS_DAG}, "
                    f"{events[0][0] if events else '?'} asset events"
                )
            time.sleep(1)
    except Stop as stop:
        say(f"{stop} received: stopping Airflow and the simulator")
        return 0
    finally:
        # A second Ctrl-C must not interrupt the shutdown half-way.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        procs.stop()
        say("every Airflow process of the demo has stopped")
