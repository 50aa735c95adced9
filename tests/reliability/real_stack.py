"""Fault-matrix rows on a real Airflow stack: the triggerer killed with SIGKILL, the task's process killed.

The in-process rows of :mod:`tests.reliability.matrix` emulate these two faults; here they happen to
real processes. One row = a fresh ``AIRFLOW_HOME``, a fresh PostgreSQL metadata database (``airflow
db migrate``), a fresh PostgreSQL store, a fresh simulator, and ``airflow api-server``,
``dag-processor``, ``scheduler`` (LocalExecutor) and ``triggerer`` running the shipped
``upstox_portfolio_stream`` DAG (``dags/``, unchanged; the only DAG in the stack's DAG folder).
Timeline: the DAG is unpaused (its continuous schedule starts a run), the first snapshot is stored,
the market starts (``rate`` updates/s); after
``warmup`` s the fault acts while the market keeps producing; ``after`` s after the stream is back
the market stops (queued messages flushed), and from that moment the store is compared with
``/_sim/state`` until it matches (*time to recover*, as in the matrix).

Faults:

* **triggerer killed**: every process of the running ``airflow triggerer`` (the supervisor and its
  trigger-runner subprocess, like a container or node dying) gets SIGKILL; ``down`` s later a new
  ``airflow triggerer`` starts. Airflow itself must hand the orphaned trigger to it:
  ``Trigger.assign_unassigned`` only takes triggers whose triggerer's ``job.latest_heartbeat`` is
  older than ``[triggerer] triggerer_health_check_threshold`` (default 30 s; 5 s here), and a live
  triggerer heartbeats every ``[triggerer] job_heartbeat_sec`` (default 5 s; 1 s here, so that a live
  one stays well inside the shorter threshold). In 3.3.2 the threshold is a ``[triggerer]`` option, not
  ``[scheduler]``; the scheduler plays no part in reassignment.
* **task process killed**: the task-runner process of the stream task (``airflow worker -- <ti id>``,
  the child the LocalExecutor's supervisor forks) gets SIGKILL while the operator's code runs in it
  (aimed just after the runner's "Pre Execute" log group), until two tries have failed; the
  supervisor reports each try failed and Airflow's own retry handling (the DAG's ``retries=3``)
  starts the next one. A kill that lands after the runner's ``defer`` reached the api-server fails
  nothing (Airflow keeps the try deferred) and is only counted. Only ``retry_delay`` is shortened
  (30 s in the DAG) through a cluster policy (``$AIRFLOW_HOME/config/airflow_local_settings.py``,
  :data:`POLICY`), Airflow's supported way to override task settings in a deployment without
  touching the DAG.

Figures: as in the matrix (:class:`~tests.reliability.matrix.RowResult`), but measured from outside
the processes, from the store (the in-process rows see every trigger event; here only the store
does): *recovered by snapshot* = keys whose stored final state was written from a snapshot taken
after the market started (order final states by their first arrival in ``upstox_order_events``);
*lost intermediate* = order states the simulator sent that ``upstox_order_events`` never got;
*failed tries* = tries Airflow recorded as failed (``task_instance_history``). Extras
(:attr:`RealRowResult.extras`): seconds from the kill until the trigger was reassigned / the store was
written again, the processes or kills and where each kill landed, and Airflow's tries at the end.

Everything the row's Airflow wrote stays until :meth:`RealRowResult.cleanup`: the leak scan
(:func:`scan_row`) reads ``AIRFLOW_HOME`` (task and trigger logs, every process's captured
stdout/stderr), every table of the metadata database and of the store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

from airflow_provider_upstox.simulator import RunningSimulator, run_simulator_in_thread
from tests.e2e.harness import DAGS_DIR, dag_env
from tests.reliability import history_figures, matrix
from tests.reliability.leakscan import Scanner, secrets_of

T = TypeVar("T")
DAG_ID = "upstox_portfolio_stream"
TASK_ID = "stream__upstox_default"
RETRY_DELAY = 3  #: seconds, set by the cluster policy (the DAG says 30)


def cluster_policy(dag_id: str, retry_delay: float = RETRY_DELAY) -> str:
    """A cluster policy giving *dag_id*'s tasks a short retry delay.

    Written to ``$AIRFLOW_HOME/config/airflow_local_settings.py`` (on ``sys.path`` of every Airflow
    process): Airflow's supported way to override task settings in a deployment without touching the DAG.
    """
    return f'''"""Cluster policy of the real-stack runs: a short retry delay for {dag_id}."""
from datetime import timedelta


def task_policy(task):
    if getattr(task, "dag_id", None) == "{dag_id}":
        task.retry_delay = timedelta(seconds={retry_delay})
'''


POLICY = cluster_policy(DAG_ID)


#: Scheduling settings of ``tests/e2e/test_scheduler_stack.py`` / ``bench/end_to_end_latency.py`` (tuned).
STACK_SETTINGS = {
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
}
#: Why: see the module docstring (reassignment within seconds instead of 30 s + 5 s).
TRIGGERER_SETTINGS = {
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
}
PROCESSES = ("dag-processor", "scheduler", "triggerer")
#: The task runner's title (``airflow worker -- <ti id>``); its supervisor, the LocalExecutor worker,
#: is ``airflow worker -- LocalExecutor: ...`` and must not be matched.
TASK_RUNNER_TITLE = re.compile(
    r"airflow worker -- [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


# ----------------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and parens
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants (children may sit in process groups of their own)."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal *pid* and every descendant at once (collected first, so none is re-parented away)."""
    pids = process_tree(pid)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    return pids


def create_database(kind: str) -> str:
    """A fresh PostgreSQL database (``upx_real_<kind>_*``: easy to tell from the in-process rows' ones)."""
    name = f"upx_real_{kind}_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(
        matrix.POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return sa.make_url(matrix.POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """A throwaway Airflow installation: own home, own PostgreSQL metadata DB, processes it started."""

    def __init__(self, extra_env: Mapping[str, str], *, dag_id: str = DAG_ID, kind: str = "meta") -> None:
        self.home = Path(tempfile.mkdtemp(prefix="upstox-real-stack-"))
        for sub in ("logs", "config", "dags"):
            (self.home / sub).mkdir()
        # Only one DAG: the events DAG's AssetWatcher would run in the triggerer even while that DAG
        # is paused, opening a second socket to the simulator (and skewing its counters).
        self.dag_id = dag_id
        (self.home / "dags" / f"{dag_id}.py").symlink_to(DAGS_DIR / f"{dag_id}.py")
        (self.home / "config" / "airflow_local_settings.py").write_text(cluster_policy(dag_id))
        self.meta_url = create_database(kind)
        self.env: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "UPSTOX_"))},
            **STACK_SETTINGS,
            **TRIGGERER_SETTINGS,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.meta_url,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            **extra_env,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.run_id = ""  #: the DAG run the row watches
        self.cli_output: list[str] = []  #: stdout/stderr of every CLI call, for the leak scan

    def run(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.cli_output.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
        return proc.stdout

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``airflow <args>`` in the background, output to ``logs/<name>.log``."""
        with (self.home / "logs" / f"{name}.log").open("ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args],
                env=self.env,
                cwd=self.home,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def wait(self, what: str, check: Callable[[], T], timeout: float, poll: float = 0.1) -> T:
        """The first truthy value of *check*; raises with the tail of every log after *timeout* s."""
        started = time.monotonic()
        while not (value := check()):
            if time.monotonic() - started > timeout:
                logs = "\n".join(f"--- {n}\n{self.read_log(n)[-2500:]}" for n in self.procs)
                raise TimeoutError(f"{what} not within {timeout:.0f} s\n{logs}")
            time.sleep(poll)
        return value

    def read_log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def up(self, processes: Mapping[str, Sequence[str]] | None = None) -> None:
        """Migrate the metadata DB, start the api-server (wait for health), then the other processes.

        :param processes: name (of the log) -> ``airflow`` arguments; default :data:`PROCESSES`.
        """
        self.run("db", "migrate", timeout=300)
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        self.env["AIRFLOW__API__BASE_URL"] = base_url
        # Airflow 3 workers and the triggerer talk to the api-server's execution API.
        self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{base_url}/execution/"
        api = self.start(
            "api-server", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"
        )
        deadline = time.monotonic() + 180
        while True:
            if api.poll() is not None:
                raise RuntimeError(
                    f"api-server exited {api.returncode}: {self.read_log('api-server')[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"api-server not healthy: {self.read_log('api-server')[-3000:]}")
            time.sleep(0.5)
        for name, args in (processes or {p: (p,) for p in PROCESSES}).items():
            self.start(name, *args)

    def down(self) -> None:
        """SIGTERM every process tree this stack started, SIGKILL what is left after 15 s.

        What is left includes descendants whose parent died first (re-parented, out of its tree):
        the trees are collected before the SIGTERM, and each process group is killed at the end.
        """
        below = {p for proc in self.procs.values() if proc.poll() is None for p in process_tree(proc.pid)}
        for proc in self.procs.values():
            if proc.poll() is None:
                kill_tree(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait(10)
        for pid in below:
            if "airflow" in cmdline(pid):  # still one of ours (not a pid reused since)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        # Task runners live in process groups of their own below the scheduler: any left is killed
        # with the scheduler's tree above; wait a moment for them to be gone before dropping databases.
        time.sleep(0.5)

    def cleanup(self) -> None:
        matrix.drop_database(self.meta_url)
        shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------------------------- metadata

    @contextlib.contextmanager
    def meta(self) -> Iterator[sa.Connection]:
        engine = sa.create_engine(self.meta_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.meta() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def try_number(self) -> int:
        """Airflow's try number of the stream task in the watched run."""
        found = self.scalar(
            "SELECT try_number FROM task_instance WHERE dag_id = :d AND task_id = :t AND run_id = :r",
            d=DAG_ID,
            t=TASK_ID,
            r=self.run_id,
        )
        return int(found or 0)

    def ti_state(self) -> str:
        """Airflow's state of the stream task in the watched run."""
        return str(
            self.scalar(
                "SELECT state FROM task_instance WHERE dag_id = :d AND task_id = :t AND run_id = :r",
                d=DAG_ID,
                t=TASK_ID,
                r=self.run_id,
            )
        )

    def tries(self, task_id: str, run_id: str) -> list[tuple[int, str]]:
        """(try number, state) of every try of a task of the stack's DAG: archived tries, then the current."""
        with self.meta() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT try_number, state FROM task_instance_history "
                    "WHERE dag_id = :d AND task_id = :t AND run_id = :r UNION ALL "
                    "SELECT try_number, state FROM task_instance "
                    "WHERE dag_id = :d AND task_id = :t AND run_id = :r ORDER BY 1"
                ),
                {"d": self.dag_id, "t": task_id, "r": run_id},
            )
            return [(int(r[0]), str(r[1])) for r in rows]

    def task_runner_pids(self, below: str = "scheduler") -> list[int]:
        """The running task-runner processes (``airflow worker -- <ti id>``) below process *below*."""
        parent = self.procs.get(below)
        if parent is None or parent.poll() is not None:
            return []
        return [p for p in process_tree(parent.pid) if TASK_RUNNER_TITLE.fullmatch(cmdline(p))]


# ----------------------------------------------------------------------------------- the row


@dataclass
class RealCtx:
    """What a real fault acts on, and where it notes its extra figures."""

    stack: Stack
    sim: RunningSimulator
    store_url: str
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RealFault:
    name: str
    act: Callable[[RealCtx], None]  #: returns when the stream is back after the fault
    ci: bool = True


@dataclass
class RealRowResult(matrix.RowResult):
    extras: dict[str, Any] = field(default_factory=dict)
    tries: list[tuple[int, str]] = field(default_factory=list)  #: (try number, state) per try
    stack: Stack | None = None

    def cleanup(self) -> None:
        if self.stack is not None:
            self.stack.cleanup()
        if self.store_url:
            matrix.drop_database(self.store_url)


def _store_written_since(store_url: str, since: datetime) -> bool:
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            latest = conn.execute(sa.text("SELECT max(updated_at) FROM upstox_orders")).scalar()
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()
    return latest is not None and latest > since


def _wait(what: str, check: Callable[[], T], timeout: float, ctx: RealCtx) -> T:
    return ctx.stack.wait(what, check, timeout)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def kill_triggerer(ctx: RealCtx, *, down: float = 2.0) -> None:
    """SIGKILL the whole triggerer, start a new one after *down* s, wait for the trigger's reassignment."""
    stack = ctx.stack
    old = stack.procs["triggerer"]
    old_job = stack.scalar("SELECT max(id) FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")
    killed_at = time.monotonic()
    pids = kill_tree(old.pid)
    old.wait(10)
    ctx.extras["processes killed"] = len(pids)
    time.sleep(down)
    stack.start("triggerer-2", "triggerer")  # the dead one stays in ``procs`` (and its log in the scan)

    def reassigned() -> bool:
        holder = stack.scalar(
            "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
            "WHERE ti.dag_id = :d AND ti.task_id = :t AND ti.state = 'deferred'",
            d=DAG_ID,
            t=TASK_ID,
        )
        return holder is not None and holder != old_job

    _wait("trigger reassigned to the new triggerer", reassigned, 120, ctx)
    ctx.extras["reassigned after (s)"] = round(time.monotonic() - killed_at, 1)
    since = _now()  # a try running at the kill may still write; count only what the new triggerer brings
    _wait("store written again", lambda: _store_written_since(ctx.store_url, since), 120, ctx)
    ctx.extras["stream back after (s)"] = round(time.monotonic() - killed_at, 1)


def kill_task(ctx: RealCtx, *, failed_tries: int = 2, max_kills: int = 8) -> None:
    """SIGKILL the task-runner process while it runs until Airflow has failed (and retried) *failed_tries*.

    A kill that lands after the runner's ``defer`` already reached the api-server ends nothing: the
    try is deferred, the supervisor's "up_for_retry" comes too late, and the same try goes on (no
    retry, nothing lost). Such kills are counted (``kills``, ``killed during``) and the next running
    moment is tried.
    """
    stack = ctx.stack
    back: list[float] = []
    landed: list[str] = []
    kills = 0
    while len(back) < failed_tries:
        if kills >= max_kills:
            raise AssertionError(f"{kills} kills, only {len(back)} caused a retry: {landed}")
        before = stack.try_number()
        runners = _wait(
            "the operator running in a task process",
            functools.partial(_operator_running, stack, before),
            60,
            ctx,
        )
        killed_at, killed_wall = time.monotonic(), _now()
        hit = 0
        for pid in runners:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                hit += 1
        if not hit:
            continue  # it had exited already
        kills += 1
        time.sleep(0.3)  # the supervisor flushes the killed runner's last log lines
        event = _last_event(stack, before)
        retried = _wait(
            "Airflow's verdict on the killed try",
            functools.partial(_verdict, stack, before, killed_at),
            60,
            ctx,
        )
        landed.append(f"{event} ({retried})")
        if retried != "retry":
            continue
        _wait("Airflow's retry of the killed try", functools.partial(_retried, stack, before), 120, ctx)
        _wait(
            "store written by the new try",
            functools.partial(_store_written_since, ctx.store_url, killed_wall),
            120,
            ctx,
        )
        back.append(round(time.monotonic() - killed_at, 1))
    ctx.extras["stream back after (s)"] = back
    ctx.extras["kills"] = kills
    ctx.extras["killed during"] = landed


def _operator_running(stack: Stack, try_number: int, window: float = 3.0) -> list[int]:
    """The task-runner pids once the operator's own code runs in them (else ``[]`` after *window* s).

    A runner first parses the DAG and loads the task (``::group::Pre Execute`` ... ``::endgroup::``),
    then runs ``execute``/``execute_complete``, then defers. The kill is aimed at the middle part:
    right after the runner's log shows the end of "Pre Execute".
    """
    runners = stack.task_runner_pids() if stack.ti_state() == "running" else []
    if not runners:
        return []
    logs = list((stack.home / "logs").glob(f"dag_id={DAG_ID}/*/task_id={TASK_ID}/attempt={try_number}.log"))
    if not logs:
        return []
    offset = _pre_execute_offset(logs[0])
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        text = logs[0].read_text(errors="replace")
        if offset is not None and '"::endgroup::"' in text[offset:]:
            return stack.task_runner_pids()  # now: the runner seen first may have been the previous one
        if offset is None:
            offset = _pre_execute_offset(logs[0])
        time.sleep(0.005)
    return []


def _pre_execute_offset(log: Path) -> int | None:
    """Where the last "Pre Execute" group of the log starts, if there is one not yet closed."""
    text = log.read_text(errors="replace")
    start = text.rfind('"::group::Pre Execute"')
    return None if start < 0 or '"::endgroup::"' in text[start:] else start


def _retried(stack: Stack, before: int) -> bool:
    return stack.try_number() > before


def _verdict(stack: Stack, before: int, killed_at: float) -> str:
    """ "retry" once Airflow failed the killed try, "no retry" if it has not 5 s after the kill, else ""."""
    if stack.try_number() > before or stack.ti_state() == "up_for_retry":
        return "retry"
    return "no retry" if time.monotonic() - killed_at > 5 else ""


def _last_event(stack: Stack, try_number: int) -> str:
    """Where the kill landed in try *try_number*'s last task process, from what that process logged."""
    events: list[str] = []
    for path in (stack.home / "logs").glob(f"dag_id={DAG_ID}/*/task_id={TASK_ID}/attempt={try_number}.log"):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                events.append(str(json.loads(line).get("event", "")))
    starts = [i for i, e in enumerate(events) if e == "::group::Pre Execute"]
    mine = events[starts[-1] :] if starts else events
    if any(e.startswith("Pausing task as DEFERRED") for e in mine):
        return "after the defer"
    if any(e.startswith(("Batch ", "Streaming ")) for e in mine):
        return "in the operator, after its commit"
    if "::endgroup::" in mine:
        return "in the operator, before its commit"
    return "loading the task"


REAL_FAULTS: list[RealFault] = [
    RealFault("triggerer SIGKILL + restart (real Airflow)", kill_triggerer),
    RealFault("task process SIGKILL x2, Airflow retries (real Airflow)", kill_task),
]


def run_row(
    fault: RealFault,
    *,
    seed: int = 1,
    rate: float = 30.0,
    warmup: float = 3.0,
    after: float = 3.0,
    recover_timeout: float = 90.0,
) -> RealRowResult:
    """Run one real-stack row; the caller scans (:func:`scan_row`) and then calls ``cleanup()``.

    On an error the row's databases and home are removed, unless ``UPSTOX_KEEP_REAL_STACK=1`` (to
    read the logs).
    """
    result = RealRowResult(fault.name)
    try:
        _run(result, fault, seed=seed, rate=rate, warmup=warmup, after=after, recover_timeout=recover_timeout)
    except BaseException:
        if os.environ.get("UPSTOX_KEEP_REAL_STACK") != "1":
            result.cleanup()
        raise
    return result


def _run(
    result: RealRowResult,
    fault: RealFault,
    *,
    seed: int,
    rate: float,
    warmup: float,
    after: float,
    recover_timeout: float,
) -> None:
    result.store_url = create_database("store")
    token = f"tok-{secrets.token_urlsafe(24)}"
    with run_simulator_in_thread(token=token, seed=seed, scenario="quiet", ping_interval=0.5) as sim:
        # No default stop at market close (15:30 India time) in the middle of a row.
        stack = Stack({**dag_env(sim.base_url, sim.token, result.store_url), "UPSTOX_STOP_AT": "off"})
        result.stack = stack
        ctx = RealCtx(stack=stack, sim=sim, store_url=result.store_url)
        try:
            stack.up()
            _start_dag(ctx)
            ctl = sim.control
            market_started = _now()
            ctl.start_market(rate)
            time.sleep(warmup)
            fault.act(ctx)
            time.sleep(after)
            ctl.clear_faults()
            ctl.quiesce()
            healed = time.monotonic()
            state = ctl.state()
            problems: list[str] = ["not compared"]
            while time.monotonic() - healed < recover_timeout:
                problems, result.duplicates = matrix.compare(result.store_url, state)
                if not problems and result.recover_s is None:
                    result.recover_s = time.monotonic() - healed
                # then every state and fill (issue 17)
                if result.recover_s is not None and history_figures.gaps(result.store_url, state) == (0, 0):
                    result.history_s = time.monotonic() - healed
                    break
                time.sleep(0.3)
            result.problems = problems
            _, result.fills_missing = history_figures.gaps(result.store_url, state)
            result.mismatches = len(problems)
            counters = state["counters"]
            result.reconnects = counters["connections"]
            result.sent = counters["model_messages"]
            result.missed_while_away = (
                counters["missed_while_away"] + counters["lost_on_disconnect"] + counters["lost_in_hang"]
            )
            result.recovered_by_snapshot, result.lost_intermediate = store_figures(
                result.store_url, state, market_started
            )
            result.secrets = {"token": token, "codes": ctl.issued_codes()["issued_codes"]}
        finally:
            stack.down()
    result.extras = ctx.extras
    result.tries = _tries(stack)
    result.failed_tries = sum(1 for _, s in result.tries[:-1] if s != "success")
    result.failures = [
        f"try {n}: {s}" for n, s in result.tries if s not in ("deferred", "running", "success")
    ]
    result.extras["tries"] = len(result.tries)
    result.texts = {"airflow CLI output": "\n".join(stack.cli_output), "problems": "\n".join(result.problems)}


def _start_dag(ctx: RealCtx) -> None:
    """Wait for the DAG to be parsed, unpause it (the schedule starts a run), wait for the first snapshot.

    No ``airflow dags trigger``: unpausing a ``@continuous`` DAG creates a scheduled run at once, which
    races a queued manual run for ``max_active_runs=1``. The scheduled run has the default params (no
    idle or batch limit; no ``stop_at``: the row sets ``UPSTOX_STOP_AT=off``).
    """
    stack = ctx.stack
    _wait(
        "the DAG parsed",
        lambda: bool(stack.scalar("SELECT count(*) FROM serialized_dag WHERE dag_id = :d", d=DAG_ID)),
        240,
        ctx,
    )
    stack.run("dags", "unpause", DAG_ID)

    def snapshot_stored() -> bool:
        engine = sa.create_engine(ctx.store_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return bool(conn.execute(sa.text("SELECT count(*) FROM upstox_holdings")).scalar())
        except sa.exc.SQLAlchemyError:
            return False
        finally:
            engine.dispose()

    _wait("the first snapshot stored", snapshot_stored, 240, ctx)
    stack.run_id = str(
        stack.scalar(
            "SELECT run_id FROM task_instance WHERE dag_id = :d AND task_id = :t "
            "AND state IN ('running', 'deferred', 'scheduled', 'queued')",
            d=DAG_ID,
            t=TASK_ID,
        )
    )
    time.sleep(1.0)


def _tries(stack: Stack) -> list[tuple[int, str]]:
    """Every try of the stream task as Airflow recorded it: archived tries, then the current one."""
    return stack.tries(TASK_ID, stack.run_id)


def store_figures(store_url: str, state: dict[str, Any], market_started: datetime) -> tuple[int, int]:
    """(recovered by snapshot, lost intermediate), from the store (see the module docstring)."""
    account = state["user_id"]
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    recovered = lost = 0
    try:
        with engine.connect() as conn:
            events: dict[str, dict[tuple[str, ...], str]] = {}
            for r in conn.execute(
                sa.text("SELECT order_id, raw, source FROM upstox_order_events WHERE account = :a"),
                {"a": account},
            ):
                raw = r.raw if isinstance(r.raw, dict) else json.loads(r.raw)
                sig = matrix.signature("order", raw)
                if sig is not None:
                    events.setdefault(str(r.order_id), {})[sig[1]] = str(r.source)
            for order_id, info in state["orders"].items():
                seen = events.get(order_id, {})
                final = matrix.signature("order", info["final"])
                if final is not None and seen.get(final[1]) == "snapshot":
                    recovered += 1
                for h in info["history"]:
                    hs = matrix.signature("order", h)
                    if hs is not None and hs[1] not in seen:
                        lost += 1
            for update_type, (table, _keys) in matrix.TABLES.items():
                if update_type == "order":
                    continue
                stored: dict[str, tuple[tuple[str, ...], str, datetime]] = {}
                for r in conn.execute(
                    sa.text(f"SELECT raw, source, received_at FROM {table} WHERE account = :a"),
                    {"a": account},
                ):
                    raw = r.raw if isinstance(r.raw, dict) else json.loads(r.raw)
                    sig = matrix.signature(update_type, raw)
                    if sig is not None:
                        stored[sig[0]] = (sig[1], str(r.source), r.received_at)
                for value in state[matrix.SECTIONS[update_type]].values():
                    sig = matrix.signature(update_type, value)
                    if sig is None or sig[0] not in stored:
                        continue
                    fields, source, received = stored[sig[0]]
                    if fields == sig[1] and source == "snapshot" and _aware(received) > market_started:
                        recovered += 1
    finally:
        engine.dispose()
    return recovered, lost


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    moment: datetime = value
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


# ----------------------------------------------------------------------------------- leak scan


def scan_row(row: RealRowResult) -> Scanner:
    """The token and every issued stream code, searched in everything the row's Airflow wrote."""
    assert row.stack is not None
    scanner = Scanner(secrets_of(row.secrets["token"], row.secrets["codes"]))
    scanner.scan_tree(row.stack.home)  # task + trigger logs, captured process output, the policy file
    row.extras["metadata tables scanned"] = len(scanner.scan_database(row.stack.meta_url, name="metadata"))
    scanner.scan_database(row.store_url, name="portfolio")
    scanner.scan_texts(row.texts)
    return scanner


def task_logs(row: RealRowResult) -> list[Path]:
    """Task and trigger log files Airflow wrote for the stream task (a scan of nothing proves nothing)."""
    assert row.stack is not None
    return sorted((row.stack.home / "logs").glob(f"dag_id={DAG_ID}/**/*.log"))
