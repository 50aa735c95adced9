"""The fault matrix: the stream operator's loop against a faulty simulator, into PostgreSQL, vs ground truth.

One *row* = one fault. For each row a fresh simulator (own token, seed, port) and a fresh PostgreSQL
database; then the real :class:`UpstoxPortfolioStreamOperator` and the real
:class:`UpstoxPortfolioStreamTrigger` run the way Airflow runs them: ``execute()`` defers, the
trigger (re-created from its serialized JSON kwargs, like the triggerer does) yields one event on
this process's event loop (our "triggerer"), ``execute_complete()`` persists it through the store in
a worker thread (our "worker") and defers again; an exception in the worker is a failed try, retried
after ``retry_delay`` with a new ``execute()``. The only stand-ins are the task-instance context
(dag/task/run ids) and the scheduler's hop between them.

Timeline of a row: market on (``rate`` updates/s) for ``warmup`` s; fault injected and market kept
running for ``duration`` s; fault healed and market stopped (queued messages flushed). From that
moment, the store is compared with ``/_sim/state`` until it matches: the time this takes is the
*time to recover*. Nothing forces a reconnect at the end: what the loop did not get by itself stays
missing, and is reported as a mismatch.

Figures per row:

* ``sent``: updates the market produced (what Upstox would have sent).
* ``missed while away``: produced while no socket was open, queued for a socket that then died, or
  swallowed by a hung server (simulator counters).
* ``recovered by snapshot``: keys whose final state never came over the socket, only in a snapshot.
* ``lost intermediate``: order states of the simulator's histories that the store never recorded
  by any channel (stream, snapshot, history backfill, postback); goal 0 (see
  :mod:`tests.reliability.history_figures`).
* ``fills missing``: fills of the day with no ``upstox_trades`` row (goal 0).
* ``only by history`` / ``only by postback``: states the stream and the snapshots never delivered,
  recorded by the history backfill / by a postback.
* ``mismatches``: keys whose stored state differs from the ground truth (goal 0).
* ``duplicates``: order states stored more often in ``upstox_order_events`` than sent (goal 0).
* ``time to recover``: from the heal until every final state matches; ``time to complete history``:
  until, in addition, every state and every fill is stored.

A row with ``postbacks`` also has the simulator POST every order update to a loopback receiver
running the postback endpoint's Airflow-free parts (``history_figures.PostbackReceiver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import tenacity

from airflow_provider_upstox.models.events import BatchEvent, decode_event
from airflow_provider_upstox.simulator import RunningSimulator, run_simulator_in_thread
from airflow_provider_upstox.stream.backoff import exponential_backoff
from tests.e2e.harness import duplicated_order_states, sql_connection_json
from tests.reliability import history_figures

log = logging.getLogger(__name__)

POSTGRES_ADMIN_URL = os.environ.get(
    "UPSTOX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IDLE_TIMEOUT = 3.0  #: trigger idle timeout: a silent socket is replaced after this long
RETRY_DELAY = 1.0  #: the "task retry_delay" of the loop
REST_TIMEOUT = 2.0  #: the Upstox connection's ``timeout`` extra

SECTIONS = {"order": "orders", "position": "positions", "holding": "holdings", "gtt_order": "gtt_orders"}
TABLES = {
    "order": ("upstox_orders", ("order_id",)),
    "position": ("upstox_positions", ("instrument_token", "product")),
    "holding": ("upstox_holdings", ("isin",)),
    "gtt_order": ("upstox_gtt_orders", ("gtt_order_id",)),
}


def signature(update_type: str, data: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """Key and the fields that tell one state of an object from the next (REST and stream agree on them)."""
    fields: tuple[str, ...]
    if update_type == "order":
        key, fields = data.get("order_id"), ("status", "filled_quantity", "order_request_id", "average_price")
    elif update_type == "position":
        key = f"{data.get('instrument_token')}:{data.get('product')}"
        fields = ("quantity", "day_buy_quantity", "day_sell_quantity", "buy_value", "sell_value")
    elif update_type == "holding":
        key, fields = data.get("isin"), ("quantity", "t1_quantity", "average_price")
    elif update_type == "gtt_order":
        key = data.get("gtt_order_id")
        return str(key), tuple(str(r.get("status")) for r in data.get("rules") or [])
    else:
        return None
    return str(key), tuple(_norm(data.get(f)) for f in fields)


def _norm(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):.4f}"
    return str(value)


# ----------------------------------------------------------------------------------- the loop


class OperatorLoop:
    """The deferrable stream operator driven like Airflow drives it (see the module docstring)."""

    def __init__(self, run_id: str, **operator_kwargs: Any) -> None:
        from airflow_provider_upstox.operators.portfolio_stream import UpstoxPortfolioStreamOperator

        self.operator = UpstoxPortfolioStreamOperator(
            task_id="stream__upstox_default",
            upstox_conn_id="upstox_default",
            sql_conn_id="upstox_db",
            max_batch_size=500,
            max_batch_wait=0.2,
            idle_timeout=IDLE_TIMEOUT,
            emit_assets=False,
            **operator_kwargs,
        )
        self.ti = SimpleNamespace(
            dag_id="upstox_portfolio_stream", task_id="stream__upstox_default", run_id=run_id, map_index=-1
        )
        self.context: dict[str, Any] = {"ti": self.ti, "outlet_events": {}}
        self.tries = 0
        self.failures: list[str] = []  #: exception type and text of every failed try
        self.events = 0
        self.trigger_kwargs: list[str] = []  #: serialized kwargs, as Airflow stores them
        self.payload_texts: list[str] = []  #: every event payload as JSON (as the triggerer logs it)
        self.seen_stream: dict[tuple[str, str], set[tuple[str, ...]]] = defaultdict(set)
        self.seen_snapshot: dict[tuple[str, str], set[tuple[str, ...]]] = defaultdict(set)
        #: fault hooks, set from the fault's thread
        self.kill_worker_after_events = 0  #: lose the next N events as a worker killed before commit
        self.kill_triggerer = 0  #: crash the "triggerer" N times (all its in-memory state lost)
        self.last_persist = 0.0
        #: (time.monotonic(), status) of every event, as the triggerer produced it
        self.event_log: list[tuple[float, str]] = []

    async def run(self, stop: asyncio.Event) -> None:
        from airflow.sdk.exceptions import TaskDeferred

        while not stop.is_set():
            self.tries += 1
            try:
                await asyncio.to_thread(self.operator.execute, self.context)
                continue  # returned without deferring: a new run of the continuous DAG
            except TaskDeferred as deferred:
                trigger = deferred.trigger
            except Exception as exc:  # a failed try, retried
                self._failed(exc)
                await _sleep_or_stop(stop, RETRY_DELAY)
                continue
            while not stop.is_set():
                payload = await self._one_event(trigger, stop)
                if payload is None:
                    break
                if self.kill_worker_after_events > 0:
                    self.kill_worker_after_events -= 1
                    self.failures.append("worker killed after the trigger event, before the commit")
                    await _sleep_or_stop(stop, RETRY_DELAY)
                    break
                try:
                    await asyncio.to_thread(self.operator.execute_complete, self.context, payload)
                    break  # the task stopped by itself; a continuous DAG starts the next run
                except TaskDeferred as deferred:
                    trigger = deferred.trigger
                    self.last_persist = time.monotonic()
                except Exception as exc:
                    self._failed(exc)
                    await _sleep_or_stop(stop, RETRY_DELAY)
                    break

    def _failed(self, exc: BaseException) -> None:
        self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
        log.info("try %d failed: %s", self.tries, self.failures[-1])

    async def _one_event(self, trigger: Any, stop: asyncio.Event) -> dict[str, Any] | None:
        """Serialize and re-create the trigger (as the triggerer does), run it to its first event."""
        from airflow_provider_upstox.triggers.handoff import registry

        classpath, kwargs = trigger.serialize()
        self.trigger_kwargs.append(json.dumps({"classpath": classpath, "kwargs": kwargs}))
        fresh = type(trigger)(**kwargs)
        fresh.task_instance = self.ti  # the triggerer sets it: deferral mode
        agen = fresh.run()
        first: asyncio.Task[Any] = asyncio.ensure_future(agen.__anext__())
        stopper = asyncio.ensure_future(stop.wait())
        crash = asyncio.ensure_future(self._wait_crash())
        try:
            await asyncio.wait({first, stopper, crash}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            crash.cancel()
        if not first.done():
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
            await agen.aclose()
            await fresh.cleanup()
            if crash.done() and not crash.cancelled():  # the triggerer process died: nothing survives
                await _crash_registry(registry)
                await asyncio.sleep(RETRY_DELAY)  # the new triggerer picks the trigger up
                return await self._one_event(trigger, stop)
            return None
        event = first.result()
        await agen.aclose()
        await fresh.cleanup()
        payload: dict[str, Any] = event.payload
        self.event_log.append((time.monotonic(), str(payload.get("status"))))
        self.events += 1
        self.payload_texts.append(json.dumps(payload))
        decoded = decode_event(payload)
        if isinstance(decoded, BatchEvent):
            for update in decoded.updates:
                sig = signature(update.update_type, update.data)
                if sig is not None:
                    seen = self.seen_snapshot if update.source == "snapshot" else self.seen_stream
                    seen[(update.update_type, sig[0])].add(sig[1])
        return payload

    async def _wait_crash(self) -> None:
        while self.kill_triggerer <= 0:  # noqa: ASYNC110 - set from another thread
            await asyncio.sleep(0.05)
        self.kill_triggerer -= 1


async def _crash_registry(registry: Any) -> None:
    """What SIGKILL does to a triggerer: sockets reset, buffered updates and hand-off leases gone."""
    entries = list(registry._entries.values())
    registry._entries.clear()
    for lease, timer in entries:
        timer.cancel()
        ws = lease.stream._ws
        if ws is not None:
            ws.transport.abort()
        lease.stream._buffer.items.clear()
        await lease.aclose()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


# ----------------------------------------------------------------------------------- faults


@dataclass
class Ctx:
    """What a fault can act on."""

    sim: RunningSimulator
    store_url: str
    loop: OperatorLoop
    extra: dict[str, Any] = field(default_factory=dict)


Action = Callable[[Ctx], None]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Action
    heal: Action | None = None  #: default: clear every simulator fault
    duration: float = 5.0
    ci: bool = False  #: part of the smaller CI matrix
    note: str = ""
    postbacks: bool = False  #: the simulator also delivers postbacks during the row


def _repeat(every: float, action: Action) -> Action:
    """Run *action* now and every *every* seconds until the row's fault phase ends."""

    def inject(ctx: Ctx) -> None:
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    action(ctx)
                stop.wait(every)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        ctx.extra["repeat"] = (stop, thread)

    return inject


def _stop_repeat(ctx: Ctx) -> None:
    entry = ctx.extra.pop("repeat", None)
    if entry is not None:
        entry[0].set()
        entry[1].join(10)
    ctx.sim.control.clear_faults()


def _auth_fail(status: int, count: int) -> Action:
    def inject(ctx: Ctx) -> None:
        ctx.sim.control.fail_authorize(status, count=count)
        ctx.sim.control.disconnect(1011)  # the next connect must authorize again

    return inject


def _slow_rest(ctx: Ctx) -> None:
    ctx.sim.control.slow_responses(REST_TIMEOUT + 1.0)
    ctx.sim.control.disconnect(1011)


def _kill_store_mid_batch(ctx: Ctx) -> None:
    """Hold a lock the store's next write needs, wait until a write blocks on it, terminate that
    backend (and every other connection of the store), then release: a batch dies mid-transaction."""
    db = sa.make_url(ctx.store_url).database
    engine = sa.create_engine(ctx.store_url, poolclass=sa.pool.NullPool)
    killed = 0
    try:
        with engine.connect() as locker:
            tx = locker.begin()
            locker.exec_driver_sql("LOCK TABLE upstox_stream_progress IN ACCESS EXCLUSIVE MODE")
            me = locker.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            deadline = time.monotonic() + 8
            with engine.connect() as admin:
                while time.monotonic() < deadline:
                    waiting = admin.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> %s "
                        "AND wait_event_type = 'Lock'",
                        (db, me),
                    ).scalar_one()
                    if waiting:
                        break
                    time.sleep(0.02)
                killed = admin.exec_driver_sql(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid NOT IN (%s, pg_backend_pid())) t",
                    (db, me),
                ).scalar_one()
            tx.rollback()
    finally:
        engine.dispose()
    ctx.extra["db_kills"] = ctx.extra.get("db_kills", 0) + int(killed)


def _worker_killed(ctx: Ctx) -> None:
    ctx.loop.kill_worker_after_events += 1


def _triggerer_killed(ctx: Ctx) -> None:
    ctx.loop.kill_triggerer += 1


def _expire_token(ctx: Ctx) -> None:
    ctx.sim.control.expire_token()


def new_token_via_oauth(base_url: str) -> str:
    """A new access token from the simulator's OAuth dialog and code exchange (its default app).

    The simulator then refuses the previous token, as Upstox does (``docs/PROTOCOL.md`` §6).
    """
    import httpx

    from airflow_provider_upstox.client import login

    app = login.LoginApp("sim-client-id", "sim-client-secret", "http://127.0.0.1:9/callback")
    answer = httpx.get(login.authorization_dialog_url(base_url, app, "matrix"), trust_env=False, timeout=10)
    code = answer.headers["location"].split("code=")[1].split("&")[0]
    issued = login.parse_code_exchange(login.send(login.code_exchange_request(base_url, app, code)))
    return issued.access_token


def write_token(token: str) -> None:
    """Put *token* into ``upstox_default``, as the plugin does (here the env-var secrets source)."""
    conn = json.loads(os.environ["AIRFLOW_CONN_UPSTOX_DEFAULT"])
    os.environ["AIRFLOW_CONN_UPSTOX_DEFAULT"] = json.dumps({**conn, "password": token})


def _renew_token(ctx: Ctx) -> None:
    """A new token is delivered (OAuth code flow), then written into the connection; no restart."""
    ctx.extra["unauthorized_before_renewal"] = ctx.sim.control.counters()["unauthorized"]
    token = new_token_via_oauth(ctx.sim.base_url)
    ctx.extra.setdefault("renewed_tokens", []).append(token)
    write_token(token)
    ctx.extra["renewed_at"] = time.monotonic()


def _socket_down(ctx: Ctx) -> None:
    """Every socket handshake refused until the heal (REST still answers): the stream is down."""
    ctx.sim.control.refuse_handshakes(10**6)
    ctx.sim.control.disconnect(1011)


FAULTS: list[Fault] = [
    Fault("none (baseline)", lambda ctx: None, ci=True),
    Fault("socket drop every 100 msgs (1011)", lambda c: c.sim.control.drop_every(100, 1011), ci=True),
    Fault("close 1000 every 1.5 s", _repeat(1.5, lambda c: c.sim.control.disconnect(1000)), _stop_repeat),
    Fault("close 1001 every 1.5 s", _repeat(1.5, lambda c: c.sim.control.disconnect(1001)), _stop_repeat),
    Fault("close 1011 every 1.5 s", _repeat(1.5, lambda c: c.sim.control.disconnect(1011)), _stop_repeat),
    Fault("TCP reset / 1006 every 1.5 s", _repeat(1.5, lambda c: c.sim.control.disconnect("reset")),
          _stop_repeat, ci=True),
    Fault("silent server (hang: no data, no pings)", lambda c: c.sim.control.hang(True),
          duration=7.0, ci=True),
    Fault("no server pings", lambda c: c.sim.control.stop_pings(True)),
    Fault("authorize 401 once", _auth_fail(401, 1), ci=True),
    Fault("authorize 403 once", _auth_fail(403, 1)),
    Fault("authorize 429 x3", _auth_fail(429, 3)),
    Fault("authorize 503 x3", _auth_fail(503, 3), ci=True),
    Fault("REST/authorize timeouts", _slow_rest, duration=6.0),
    Fault("malformed frame every 20", lambda c: c.sim.control.malformed_every(20), ci=True),
    Fault("unknown update_type every 25", lambda c: c.sim.control.unknown_type_every(25)),
    Fault("oversized frame (1.2 MB) every 80", lambda c: c.sim.control.oversized_every(80, 1_200_000)),
    Fault("duplicates (30 %)", lambda c: c.sim.control.duplicate(0.3), ci=True),
    Fault("stale after newer (reorder window 8)", lambda c: c.sim.control.reorder(8), ci=True),
    Fault("token expiry mid-session (new token after 5 s)", _expire_token, _renew_token, ci=True,
          note="no failed try: the stream waits for the new token and resumes by itself"),
    Fault("database killed mid-batch x2", _repeat(2.0, _kill_store_mid_batch), _stop_repeat, ci=True),
    Fault("task retried (worker killed before commit) x2", _repeat(2.0, _worker_killed),
          _stop_repeat, ci=True),
    Fault("triggerer crash (in-process: state lost) x2", _repeat(2.0, _triggerer_killed),
          _stop_repeat, ci=True),
    Fault("WebSocket down 30 s, postbacks keep arriving", _socket_down, duration=30.0, ci=True,
          postbacks=True),
]  # fmt: skip


# ----------------------------------------------------------------------------------- one row


@dataclass
class RowResult:
    fault: str
    sent: int = 0
    missed_while_away: int = 0
    recovered_by_snapshot: int = 0
    lost_intermediate: int = 0
    fills_missing: int | None = None
    only_history: int | None = None
    only_postback: int | None = None
    mismatches: int = 0
    duplicates: int = 0
    recover_s: float | None = None
    history_s: float | None = None  #: heal -> every state and fill stored
    unseen_live: int | None = None  #: order states neither the stream nor a snapshot delivered
    reconnects: int = 0
    failed_tries: int = 0
    rejected: int = 0
    decode_errors: int = 0
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    secrets: dict[str, Any] = field(default_factory=dict)  #: token and issued codes, for the leak scan
    extra: dict[str, Any] = field(default_factory=dict)  #: what the fault recorded (``Ctx.extra``)
    loop: OperatorLoop | None = None
    texts: dict[str, str] = field(default_factory=dict)  #: kwargs/payloads/exceptions, for the leak scan
    store_url: str = ""


def create_database(admin_url: str = POSTGRES_ADMIN_URL) -> str:
    name = f"upx_fault_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str = POSTGRES_ADMIN_URL) -> None:
    name = sa.make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    engine.dispose()


def _configure_trigger() -> None:
    """Short but realistic delays (the defaults are minutes, tuned for production)."""
    from airflow_provider_upstox.triggers.portfolio_stream import UpstoxPortfolioStreamTrigger as T

    T.hook_options = {"retry_wait": tenacity.wait_exponential(multiplier=0.1, max=1.0)}
    T.stream_options = {
        "reconnect_delays": functools.partial(exponential_backoff, initial=0.2, max_delay=2.0),
        "min_reconnect_delay": 0.2,
        "ping_interval": 1.0,
        "ping_timeout": 1.0,
    }


def _connections(sim: RunningSimulator, store_url: str) -> None:
    os.environ["AIRFLOW_CONN_UPSTOX_DEFAULT"] = json.dumps(
        {
            "conn_type": "upstox",
            "password": sim.token,
            "host": sim.base_url,
            "extra": {"timeout": REST_TIMEOUT},
        }
    )
    os.environ["AIRFLOW_CONN_UPSTOX_DB"] = sql_connection_json(store_url)


def compare(store_url: str, state: dict[str, Any]) -> tuple[list[str], int]:
    """(mismatches between the store and the ground truth, duplicate order states stored)."""
    account = state["user_id"]
    problems: list[str] = []
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    try:
        md = sa.MetaData()
        with engine.connect() as conn:
            for update_type, (table_name, _keys) in TABLES.items():
                try:
                    table = sa.Table(table_name, md, autoload_with=conn)
                except sa.exc.NoSuchTableError:
                    return ["store not created yet"], 0
                stored: dict[str, tuple[str, ...]] = {}
                for row in conn.execute(sa.select(table.c.raw).where(table.c.account == account)):
                    raw = row.raw if isinstance(row.raw, dict) else json.loads(row.raw)
                    sig = signature(update_type, raw)
                    if sig is not None:
                        stored[sig[0]] = sig[1]
                for value in state[SECTIONS[update_type]].values():
                    truth = value["final"] if update_type == "order" else value
                    key, fields = signature(update_type, truth)  # type: ignore[misc]
                    if key not in stored:
                        if update_type == "position" and float(truth.get("quantity") or 0) == 0:
                            continue  # a flat position may be absent
                        problems.append(f"{update_type} {key} missing")
                    elif stored[key] != fields:
                        problems.append(f"{update_type} {key}: stored {stored[key]}, truth {fields}")
            events = sa.Table("upstox_order_events", md, autoload_with=conn)
            event_rows = list(conn.execute(sa.select(events).where(events.c.account == account)))
    finally:
        engine.dispose()
    excess = duplicated_order_states(state, event_rows)
    return problems, sum(stored - max(sent, 1) for stored, sent in excess.values())


async def run_row(
    fault: Fault,
    *,
    seed: int = 1,
    rate: float = 40.0,
    warmup: float = 2.0,
    recover_timeout: float = 40.0,
    operator_kwargs: dict[str, Any] | None = None,
) -> RowResult:
    """Run one fault row end to end; see the module docstring for the timeline and the figures."""
    from airflow_provider_upstox.client.budget import forget_budgets
    from airflow_provider_upstox.triggers.handoff import registry

    _configure_trigger()
    forget_budgets()  # each row's simulator is a fresh account: its calls start a fresh budget
    result = RowResult(fault.name)
    store_url = create_database()
    result.store_url = store_url
    token = f"tok-{secrets.token_urlsafe(24)}"
    with run_simulator_in_thread(token=token, seed=seed, scenario="quiet", ping_interval=0.5) as sim:
        _connections(sim, store_url)
        loop = OperatorLoop(run_id=f"fault__{uuid.uuid4().hex[:8]}", **(operator_kwargs or {}))
        ctx = Ctx(sim=sim, store_url=store_url, loop=loop)
        stop = asyncio.Event()
        runner = asyncio.ensure_future(loop.run(stop))
        ctl = sim.control
        exits = contextlib.ExitStack()
        try:
            if fault.postbacks:
                await asyncio.to_thread(_start_postbacks, exits, sim, store_url)
            await _wait_connected(sim, loop, runner)
            await asyncio.to_thread(ctl.start_market, rate)
            await asyncio.sleep(warmup)
            await asyncio.to_thread(fault.inject, ctx)
            await asyncio.sleep(fault.duration)
            await asyncio.to_thread(fault.heal or (lambda c: c.sim.control.clear_faults()), ctx)
            await asyncio.to_thread(ctl.clear_faults)
            await asyncio.to_thread(ctl.quiesce)
            healed = time.monotonic()
            state = await asyncio.to_thread(ctl.state)
            problems: list[str] = ["not compared"]
            duplicates = 0
            while time.monotonic() - healed < recover_timeout:
                if runner.done():
                    runner.result()  # the loop must never end by itself: raise what ended it
                problems, duplicates = await asyncio.to_thread(compare, store_url, state)
                if not problems and result.recover_s is None:
                    result.recover_s = time.monotonic() - healed
                if result.recover_s is not None:
                    lost, missing = await asyncio.to_thread(history_figures.gaps, store_url, state)
                    if not lost and not missing:
                        result.history_s = time.monotonic() - healed
                        break
                await asyncio.sleep(0.2)
            result.problems = problems
            result.mismatches = len(problems)
            result.duplicates = duplicates
            counters = state["counters"]
            result.reconnects = counters["connections"]
            result.sent = counters["model_messages"]
            result.missed_while_away = (
                counters["missed_while_away"] + counters["lost_on_disconnect"] + counters["lost_in_hang"]
            )
            _snapshot_figures(result, loop, state)
            await asyncio.to_thread(_history_figures, result, loop, store_url, state)
            result.secrets = {
                "token": token,
                "codes": (await asyncio.to_thread(ctl.issued_codes))["issued_codes"]
                + ctx.extra.get("renewed_tokens", []),
            }
            result.extra = ctx.extra
            result.loop = loop
        finally:
            stop.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(runner, 15)
            await registry.aclose_all()
            await asyncio.to_thread(exits.close)
    result.failed_tries = len(loop.failures)
    result.failures = loop.failures
    result.rejected, result.decode_errors = _store_counts(store_url, loop)
    result.texts = {
        "trigger kwargs": "\n".join(loop.trigger_kwargs),
        "event payloads": "\n".join(loop.payload_texts),
        "failed tries": "\n".join(loop.failures),
        "problems": "\n".join(result.problems),
    }
    return result


async def _wait_connected(sim: RunningSimulator, loop: OperatorLoop, runner: asyncio.Future[Any]) -> None:
    """Start the market only once the first connection's snapshot is stored: a clean baseline."""
    deadline = time.monotonic() + 30
    while loop.events == 0 or (await asyncio.to_thread(sim.control.counters))["connections"] < 1:
        if runner.done():
            runner.result()
        if time.monotonic() > deadline:
            raise TimeoutError("the stream loop did not connect within 30 s")
        await asyncio.sleep(0.05)


def _start_postbacks(exits: contextlib.ExitStack, sim: RunningSimulator, store_url: str) -> None:
    """A loopback postback receiver into the row's store; the simulator posts every order update."""
    import tempfile

    import httpx

    spool_dir = exits.enter_context(tempfile.TemporaryDirectory(prefix="upx-postbacks-"))
    account = sim.control.state()["user_id"]
    receiver = history_figures.PostbackReceiver(store_url, account, Path(spool_dir) / "spool.sqlite")
    exits.enter_context(receiver.running())
    answer = httpx.post(
        f"{sim.base_url}/_sim/postbacks", params={"url": json.dumps(receiver.url)}, timeout=10
    )
    answer.raise_for_status()


def _history_figures(result: RowResult, loop: OperatorLoop, store_url: str, state: dict[str, Any]) -> None:
    result.lost_intermediate, result.fills_missing = history_figures.gaps(store_url, state)
    seen = {
        (key, fields)
        for sets in (loop.seen_stream, loop.seen_snapshot)
        for (update_type, key), values in sets.items()
        if update_type == "order"
        for fields in values
    }
    result.only_history, result.only_postback = history_figures.only_by(store_url, state, seen, signature)


def _snapshot_figures(result: RowResult, loop: OperatorLoop, state: dict[str, Any]) -> None:
    recovered = lost = 0
    for update_type, section in SECTIONS.items():
        for value in state[section].values():
            final = value["final"] if update_type == "order" else value
            key, fields = signature(update_type, final)  # type: ignore[misc]
            k = (update_type, key)
            if fields not in loop.seen_stream.get(k, set()) and fields in loop.seen_snapshot.get(k, set()):
                recovered += 1
            if update_type == "order":
                for h in value["history"]:
                    hs = signature("order", h)
                    assert hs is not None
                    if hs[1] not in loop.seen_stream.get(k, set()) | loop.seen_snapshot.get(k, set()):
                        lost += 1
    result.recovered_by_snapshot = recovered
    result.unseen_live = lost


def _store_counts(store_url: str, loop: OperatorLoop) -> tuple[int, int]:
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rejected = conn.exec_driver_sql("SELECT count(*) FROM upstox_rejected_updates").scalar_one()
    except sa.exc.SQLAlchemyError:
        rejected = -1
    finally:
        engine.dispose()
    decode_errors = 0
    for text in loop.payload_texts:
        stats = json.loads(text).get("stats") or {}
        decode_errors = max(decode_errors, int(stats.get("decode_errors") or 0))
    return int(rejected), decode_errors


# ----------------------------------------------------------------------------------- the table

HEADER = (
    "| fault | updates sent | missed while away | recovered by snapshot | states the stream missed "
    "| lost intermediate states | fills missing | only by history | only by postback "
    "| final-state mismatches | duplicate states | time to recover (s) | time to complete history (s) "
    "| failed tries |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _figure(value: float | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(rows: list[RowResult]) -> str:
    lines = [HEADER]
    for r in rows:
        recover = "not recovered" if r.recover_s is None else f"{r.recover_s:.1f}"
        complete = (
            "not complete"
            if r.history_s is None and r.fills_missing is not None
            else _figure(r.history_s, "{:.1f}")
        )
        lines.append(
            f"| {r.fault} | {r.sent} | {r.missed_while_away} | {r.recovered_by_snapshot} "
            f"| {_figure(r.unseen_live)} "
            f"| {r.lost_intermediate} | {_figure(r.fills_missing)} | {_figure(r.only_history)} "
            f"| {_figure(r.only_postback)} | {r.mismatches} | {r.duplicates} | {recover} | {complete} "
            f"| {r.failed_tries} |"
        )
    return "\n".join(lines)
