"""A distributed Airflow run: CeleryExecutor, two Celery workers, two triggerers, SIGKILLs, ground truth.

One run = a fresh PostgreSQL metadata database and a fresh PostgreSQL store (both created and
dropped by the run), Redis as the Celery broker (a queue of the run's own, so runs and other users
of the same Redis never take each other's tasks), N simulated accounts
(:mod:`tests.distributed.simulators`) and, as separate processes
(:class:`~tests.reliability.real_stack.Stack`):
``api-server``, ``dag-processor``, ``scheduler`` (CeleryExecutor), two ``celery worker``\\ s and two
``triggerer``\\ s, running the shipped AssetWatcher DAG ``upstox_portfolio_events`` (``dags/``,
unchanged) with one ``upstox_<i>`` connection per account.

Settings: those of :data:`STACK_SETTINGS <tests.reliability.real_stack.STACK_SETTINGS>` (fast
scheduling) and, for what the run proves, the docker-compose Celery setup's own
(``x-celery-env`` of ``docker/docker-compose.celery.yaml``, read from that file: the run proves the
settings users deploy); only the broker and result-backend URLs (service names there) are local.

Timeline:

1. The first triggerer starts with ``--capacity ceil(N/2)``: Airflow gives unassigned triggers to
   the first triggerer that asks, up to its capacity, so this is how both end up holding streams.
   Once it holds its share, the second triggerer (default capacity) starts and takes the rest.
2. Every account's first snapshot is stored; the market starts (``rate`` updates/s per account)
   with network faults on every account (:data:`FAULTS`: dropped connections, duplicated messages).
3. **Triggerer SIGKILL**: every process of the first triggerer is killed. Airflow hands its
   triggers to the survivor once its heartbeat is older than ``[triggerer]
   triggerer_health_check_threshold``; *takeover* = seconds from the kill until the metadata DB's
   ``trigger`` table names the survivor for every stream.
4. **Worker SIGKILL**: once a ``persist_events`` task's operator code runs in a task process
   (its log's "Pre Execute" group closed), every process of the Celery worker running it is
   killed. The scheduler fails the try when its heartbeat is older than ``[scheduler]
   task_instance_heartbeat_timeout``; Airflow retries it (``retries`` of the DAG, the retry delay
   shortened by the run's cluster policy) on the other worker, which must run it to success.
5. The market stops, faults clear; the store is compared with every account's ``/_sim/state``
   (:func:`tests.reliability.matrix.compare`: every object's final state, no order state stored
   more often than sent) until all agree.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.distributed.simulators import Account, simulator_fleet
from tests.docker.compose_model import CELERY_FILE, load_raw
from tests.e2e.harness import dag_env
from tests.reliability import matrix
from tests.reliability.leakscan import Scanner, Secret, secrets_of
from tests.reliability.real_stack import Stack, create_database, kill_tree

DAG_ID = "upstox_portfolio_events"
TASK_ID = "persist_events"
REDIS_URL = os.environ.get("UPSTOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Network faults on every account while the market runs (``/_sim/faults`` switches).
FAULTS: dict[str, Any] = {"drop_probability": 0.005, "drop_mode": "reset", "duplicate_probability": 0.02}
#: Set per run by the compose file's settings, not here: they are what is proven.
COMPOSE_URLS = ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND")


def compose_celery_settings() -> dict[str, str]:
    """``x-celery-env`` of the docker-compose Celery setup, without its (service-named) URLs."""
    env = load_raw(CELERY_FILE)["x-celery-env"]
    return {str(k): str(v) for k, v in env.items() if k not in COMPOSE_URLS}


@dataclass
class DistributedResult:
    """Figures of one run (see the module docstring); ``problems`` empty when the store equals the truth."""

    accounts: int
    rate: float
    streams_per_triggerer: list[int] = field(default_factory=list)  #: before the kill, first one first
    takeover_s: float | None = None  #: kill -> survivor named for every stream
    worker_kills: list[str] = field(default_factory=list)  #: where each worker kill landed
    retried_after_s: float | None = None  #: worker kill -> the killed task's next try running
    tries: list[tuple[str, int, str]] = field(default_factory=list)  #: (run id, try, state) of killed TI
    retried_on_survivor: bool = False  #: the retry's Celery task id is in the surviving worker's log
    failed_tries: int = 0  #: persist tries Airflow recorded as failed, all runs
    sent: int = 0  #: model messages the simulators sent
    reconnects: int = 0  #: stream connections the simulators accepted
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0
    recover_s: float | None = None  #: market stopped -> store equal to the truth
    wall_s: float = 0.0
    home: str = ""  #: the run's ``AIRFLOW_HOME`` (removed at the end unless kept)
    secret_hits: list[str] = field(default_factory=list)  #: tokens or stream codes found (must be none)
    scanned: str = ""  #: what the secret scan read

    def report(self) -> str:
        kills = "; ".join(self.worker_kills) or "none"
        return "\n".join(
            [
                f"accounts {self.accounts}, market {self.rate} updates/s per account, faults {FAULTS}",
                f"streams per triggerer before the kill: {self.streams_per_triggerer}",
                f"triggerer SIGKILL -> survivor owns all {self.accounts} streams: {self.takeover_s} s",
                f"worker SIGKILL landed: {kills}; next try running after {self.retried_after_s} s, "
                f"on the surviving worker: {self.retried_on_survivor}",
                f"killed task's tries: {self.tries}; failed persist tries (all runs): {self.failed_tries}",
                f"simulators sent {self.sent} messages over {self.reconnects} connections",
                f"store vs truth: {len(self.problems)} mismatches, {self.duplicates} duplicate order states, "
                f"equal {self.recover_s} s after the market stopped",
                f"secret scan: {len(self.secret_hits)} hits in {self.scanned}",
                f"wall time {self.wall_s:.0f} s",
            ]
        )


class DistributedRun:
    """The processes, databases and accounts of one run; :meth:`execute` runs the timeline."""

    def __init__(self, accounts: list[Account], store_url: str, queue: str) -> None:
        self.accounts = accounts
        self.store_url = store_url
        self.queue = queue
        env = dag_env(
            accounts[0].base_url,
            accounts[0].token,
            store_url,
            conn_ids={a.conn_id: (a.base_url, a.token) for a in accounts},
        )
        env |= {
            "UPSTOX_CONN_IDS": ",".join(a.conn_id for a in accounts),
            "UPSTOX_STOP_AT": "off",  # no stop at market close (15:30 India time) in the middle of a run
            # the time schedule bounds how long an event committed as a run ends waits (see the DAG)
            "UPSTOX_EVENTS_CATCHUP_CRON": "* * * * *",
            **compose_celery_settings(),
            "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        }
        self.stack = Stack(env, dag_id=DAG_ID, kind="dist_meta")
        # Celery's result backend in the run's own metadata database (as the compose file does).
        self.stack.env["AIRFLOW__CELERY__RESULT_BACKEND"] = f"db+{self.stack.meta_url}"
        self.store = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
        self.n = len(accounts)

    # ------------------------------------------------------------------------------ processes

    def worker_args(self, name: str) -> tuple[str, ...]:
        home = self.stack.home
        return (
            "celery", "worker", "--queues", self.queue, "--concurrency", "1",
            "--celery-hostname", f"{name}-{self.queue}@%h", "--pid", str(home / f"{name}.pid"),
            "--skip-serve-logs", "--without-gossip", "--without-mingle",
        )  # fmt: skip

    def triggerer_args(self, name: str, capacity: int | None = None) -> tuple[str, ...]:
        args = ("triggerer", "--skip-serve-logs", "--pid", str(self.stack.home / f"{name}.pid"))
        return args + (("--capacity", str(capacity)) if capacity else ())

    def up(self) -> None:
        self.stack.up(
            {
                "dag-processor": ("dag-processor",),
                "scheduler": ("scheduler",),
                "worker-1": self.worker_args("worker-1"),
                "worker-2": self.worker_args("worker-2"),
                "triggerer-1": self.triggerer_args("triggerer-1", math.ceil(self.n / 2)),
            }
        )

    def wait(self, what: str, check: Callable[[], Any], timeout: float, poll: float = 0.2) -> Any:
        return self.stack.wait(what, check, timeout, poll)

    # ------------------------------------------------------------------------------ queries

    def holders(self) -> dict[int | None, int]:
        """Triggerer job id (``None``: unassigned) -> how many triggers it holds."""
        with self.stack.meta() as conn:
            rows = conn.execute(sa.text("SELECT triggerer_id, count(*) FROM trigger GROUP BY triggerer_id"))
            return {r[0]: int(r[1]) for r in rows}

    def store_scalar(self, sql: str) -> Any:
        try:
            with self.store.connect() as conn:
                return conn.execute(sa.text(sql)).scalar()
        except sa.exc.SQLAlchemyError:  # tables not created yet
            return None

    def running_persist(self) -> list[tuple[str, int, str]]:
        """(run id, try number, Celery task id) of the running ``persist_events`` tries."""
        with self.stack.meta() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT run_id, try_number, external_executor_id FROM task_instance "
                    "WHERE dag_id = :d AND task_id = :t AND state = 'running'"
                ),
                {"d": DAG_ID, "t": TASK_ID},
            )
            return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]

    def ti(self, run_id: str) -> tuple[int, str]:
        with self.stack.meta() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT try_number, state FROM task_instance WHERE dag_id = :d AND task_id = :t "
                    "AND run_id = :r"
                ),
                {"d": DAG_ID, "t": TASK_ID, "r": run_id},
            ).one()
            return int(row[0]), str(row[1])

    def failed_tries(self) -> int:
        return int(
            self.stack.scalar(
                "SELECT count(*) FROM task_instance_history WHERE dag_id = :d AND task_id = :t "
                "AND state = 'failed'",
                d=DAG_ID,
                t=TASK_ID,
            )
            or 0
        )

    def operator_running(self, run_id: str, try_number: int) -> bool:
        """The try's log shows its "Pre Execute" group closed: the operator's own code runs."""
        logs = self.stack.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
        log = logs / f"attempt={try_number}.log"
        return log.exists() and '"::endgroup::"' in log.read_text(errors="replace")

    # ------------------------------------------------------------------------------ timeline

    def start_streams(self, result: DistributedResult) -> tuple[int, int]:
        """Parse, unpause, spread the triggers over two triggerers; (first's job id, second's)."""
        stack = self.stack
        self.wait(
            "the DAG parsed",
            lambda: bool(stack.scalar("SELECT count(*) FROM serialized_dag WHERE dag_id = :d", d=DAG_ID)),
            240,
        )
        stack.run("dags", "unpause", DAG_ID)
        share = math.ceil(self.n / 2)

        def first_holds_its_share() -> int | None:
            held = {k: v for k, v in self.holders().items() if k is not None}
            return next(iter(held)) if len(held) == 1 and sum(held.values()) == share else None

        first = int(self.wait(f"triggerer-1 holding {share} streams", first_holds_its_share, 240))
        stack.start("triggerer-2", *self.triggerer_args("triggerer-2"))

        def second() -> int | None:
            held = self.holders()
            others = [k for k in held if k not in (None, first)]
            return others[0] if None not in held and len(others) == 1 else None

        survivor = int(self.wait("triggerer-2 holding the other streams", second, 240))
        held = self.holders()
        result.streams_per_triggerer = [held.get(first, 0), held.get(survivor, 0)]
        self.wait(
            f"every account's first snapshot stored ({self.n})",
            lambda: self.store_scalar("SELECT count(DISTINCT account) FROM upstox_holdings") == self.n,
            240,
        )
        return first, survivor

    def kill_triggerer(self, result: DistributedResult, survivor: int) -> None:
        proc = self.stack.procs["triggerer-1"]
        killed_at = time.monotonic()
        kill_tree(proc.pid)
        proc.wait(10)
        self.wait(
            "the surviving triggerer holding every stream",
            lambda: self.holders() == {survivor: self.n},
            120,
        )
        result.takeover_s = round(time.monotonic() - killed_at, 1)

    def kill_worker(self, result: DistributedResult, max_kills: int = 3) -> None:
        """SIGKILL the worker running a persist task's operator; wait for the retry to succeed elsewhere.

        A kill that lands after the try reported success fails nothing (only counted); the killed
        worker is then replaced by a new one, so two workers are up for the next attempt.
        """
        for attempt in range(1, max_kills + 1):
            run_id, try_number, worker = self.wait(
                "a persist task's operator running on a worker", self._persist_on_worker, 180, poll=0.05
            )
            killed_at = time.monotonic()
            kill_tree(self.stack.procs[worker].pid)
            self.stack.procs[worker].wait(10)
            verdict = self.wait(
                "Airflow's verdict on the killed try",
                functools.partial(self._verdict, run_id, try_number),
                180,
                poll=0.5,
            )
            result.worker_kills.append(f"{worker} in try {try_number} of {run_id}: {verdict}")
            if verdict == "retry":
                break
            self.stack.start(f"{worker}-{attempt}", *self.worker_args(f"{worker}-{attempt}"))
        else:
            raise AssertionError(f"no worker kill caused a retry: {result.worker_kills}")
        self.wait("the retry running", lambda: self.ti(run_id)[0] > try_number, 180, poll=0.5)
        result.retried_after_s = round(time.monotonic() - killed_at, 1)
        self.wait("the retry succeeded", lambda: self.ti(run_id)[1] == "success", 240, poll=0.5)
        result.tries = [(run_id, n, state) for n, state in self.stack.tries(TASK_ID, run_id)]
        celery_id = str(
            self.stack.scalar(
                "SELECT external_executor_id FROM task_instance WHERE dag_id = :d AND task_id = :t "
                "AND run_id = :r",
                d=DAG_ID,
                t=TASK_ID,
                r=run_id,
            )
        )
        survivors = [n for n, p in self.stack.procs.items() if n.startswith("worker") and p.poll() is None]
        result.retried_on_survivor = any(celery_id in self.stack.read_log(n) for n in survivors)

    def _persist_on_worker(self) -> tuple[str, int, str] | None:
        for run_id, try_number, _celery_id in self.running_persist():
            for name, proc in self.stack.procs.items():
                if (
                    name.startswith("worker")
                    and proc.poll() is None
                    and self.stack.task_runner_pids(name)
                    and self.operator_running(run_id, try_number)
                ):
                    return run_id, try_number, name
        return None

    def _verdict(self, run_id: str, try_number: int) -> str:
        now_try, state = self.ti(run_id)
        if now_try > try_number or state in ("up_for_retry", "failed"):
            return "retry"
        return "finished before the kill" if state == "success" else ""

    def converge(self, result: DistributedResult, timeout: float) -> None:
        for account in self.accounts:
            account.control.clear_faults()
        for account in self.accounts:
            account.control.quiesce()
        stopped = time.monotonic()
        states = [account.control.state() for account in self.accounts]
        for state in states:
            counters = state["counters"]
            result.sent += int(counters["model_messages"])
            result.reconnects += int(counters["connections"])
        result.problems = ["not compared"]
        while time.monotonic() - stopped < timeout:
            problems: list[str] = []
            duplicates = 0
            for account, state in zip(self.accounts, states, strict=True):
                found, dups = matrix.compare(self.store_url, state)
                problems += [f"{account.user_id}: {p}" for p in found]
                duplicates += dups
            result.problems, result.duplicates = problems, duplicates
            if not problems:
                result.recover_s = round(time.monotonic() - stopped, 1)
                return
            time.sleep(1.0)

    def execute(self, result: DistributedResult, *, warmup: float, converge_timeout: float) -> None:
        self.up()
        _first, survivor = self.start_streams(result)
        for account in self.accounts:
            account.control.start_market(result.rate)
            account.control.set_faults(**FAULTS)
        time.sleep(warmup)
        self.kill_triggerer(result, survivor)
        self.kill_worker(result)
        result.failed_tries = self.failed_tries()
        self.converge(result, converge_timeout)
        self.scan_for_secrets(result)

    def scan_for_secrets(self, result: DistributedResult) -> None:
        """Every account's token and issued stream codes, searched in all the run's Airflow wrote.

        ``AIRFLOW_HOME`` (task and trigger logs, every process's output: Celery workers' included),
        every table of the metadata database (trigger kwargs, asset events, Celery results), the store.
        """
        found: list[Secret] = []
        for account in self.accounts:
            found += secrets_of(account.token, account.control.issued_codes()["issued_codes"])
        scanner = Scanner(found)
        scanner.scan_tree(self.stack.home)
        tables = scanner.scan_database(self.stack.meta_url, name="metadata")
        scanner.scan_database(self.store_url, name="portfolio")
        result.secret_hits = [str(h) for h in scanner.hits]
        result.scanned = f"{scanner.places} places, {len(tables)} metadata tables, {len(found)} secrets"

    def close(self, keep: bool = False) -> None:
        """Stop every process (process groups, whatever happened), drop the databases unless *keep*."""
        self.stack.down()
        self.store.dispose()
        _drop_redis_queue(self.queue)
        if not keep:
            self.stack.cleanup()
            matrix.drop_database(self.store_url)


def _drop_redis_queue(queue: str) -> None:
    """The run's Celery queue and its bindings (anything left after the workers are gone)."""
    import redis

    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
        client.close()


def run(
    accounts: int = 50,
    *,
    rate: float = 0.5,
    seed: int = 1,
    warmup: float = 5.0,
    converge_timeout: float = 240.0,
    keep: bool = False,
) -> DistributedResult:
    """One distributed run (see the module docstring); every process it started is gone on return.

    :param keep: leave the databases and ``AIRFLOW_HOME`` (to read the logs) instead of dropping them.
    """
    started = time.monotonic()
    result = DistributedResult(accounts=accounts, rate=rate)
    store_url = create_database("dist_store")
    queue = f"upx_{uuid.uuid4().hex[:10]}"
    try:
        with simulator_fleet(accounts, seed=seed) as fleet:
            dist = DistributedRun(fleet, store_url, queue)
            result.home = str(dist.stack.home)
            try:
                dist.execute(result, warmup=warmup, converge_timeout=converge_timeout)
            finally:
                dist.close(keep=keep)
                if keep:
                    print(f"kept: AIRFLOW_HOME {dist.stack.home}, {dist.stack.meta_url}, {store_url}")
    except BaseException:
        if not keep:
            with contextlib.suppress(Exception):
                matrix.drop_database(store_url)
        raise
    result.wall_s = time.monotonic() - started
    return result


def leftover_processes(home: str) -> list[int]:
    """Processes still running with ``AIRFLOW_HOME`` = *home* in their environment (none after a run)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if f"AIRFLOW_HOME={home}\0".encode() in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
    return found
