"""The distributed run (``tests/distributed/cluster.py``), sized for a 2-core machine: 10 accounts.

CeleryExecutor on Redis, PostgreSQL metadata and store, two Celery workers and two triggerers as
separate processes; one triggerer and one worker (mid persist task) killed with SIGKILL. The store
must still equal every account's ground truth with no duplicate order state, the survivor must own
every stream, the killed task must be retried on the other worker, and no process may be left.
``python scripts/distributed_run.py`` runs the same with 50 accounts.
"""

from __future__ import annotations

import contextlib

import pytest
import sqlalchemy as sa

from tests.distributed import cluster
from tests.reliability import matrix

pytestmark = [pytest.mark.slow, pytest.mark.airflow_server, pytest.mark.timeout(900)]


@pytest.fixture
def servers() -> None:
    """Skip (locally) or fail (CI=true) when PostgreSQL or Redis is not reachable."""
    import os

    import redis

    try:
        engine = sa.create_engine(matrix.POSTGRES_ADMIN_URL, poolclass=sa.pool.NullPool)
        with contextlib.closing(engine.connect()):
            pass
        redis.Redis.from_url(cluster.REDIS_URL, socket_timeout=5).ping()
    except (sa.exc.OperationalError, redis.RedisError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL and Redis are required under CI: {exc}")
        pytest.skip(f"PostgreSQL or Redis not reachable: {exc}")


@pytest.mark.usefixtures("servers")
def test_celery_two_triggerers_two_workers_sigkill() -> None:
    result = cluster.run(10, rate=1.0, warmup=5.0)
    summary = result.report()
    assert cluster.leftover_processes(result.home) == [], summary
    assert result.sent > 100, f"the market did not run\n{summary}"
    assert result.reconnects > 10, f"no stream reconnected under the faults\n{summary}"
    # both triggerers held streams; the survivor took every one over
    assert all(n > 0 for n in result.streams_per_triggerer), summary
    assert result.takeover_s is not None, summary
    # the killed try failed, the next one ran on the other worker and succeeded
    states = [state for _, _, state in result.tries]
    assert states[0] == "failed", summary
    assert states[-1] == "success", summary
    assert result.failed_tries >= 1, summary
    assert result.retried_on_survivor, summary
    assert result.problems == [], f"{result.problems[:10]}\n{summary}"
    assert result.duplicates == 0, summary
    assert result.secret_hits == [], summary
