"""The factory's shared state for the metrics gauges (``observability.metrics.Snapshot``), read when a
process is scraped: runs by status and waiting escalations from PostgreSQL, live workers and the
clarification broker's backlog from Redis.

Each query is bounded (a handful of grouped rows, by an index where one exists) and each service has a
timeout: a scrape never waits on a service that hiccups. What could not be read is logged and left
None in the snapshot (its gauges are then empty, not stale); the rest is still reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from psycopg import Error as PostgresError
from redis.exceptions import RedisError

from factory.wiring import Factory
from factory.worker import workers_alive
from hitl.base import WAITING, Priority
from observability.metrics import Metrics, Snapshot
from teams.base import RunStatus
from teams.slugs import ALL_TEAMS

log = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT_S = 5.0

_RUNS = "SELECT status, count(*) FROM runs GROUP BY status"
# escalations_open (status, sla_deadline) serves it: only the waiting rows are read.
_WAITING = (
    "SELECT priority, count(*), count(*) FILTER (WHERE sla_deadline < %(now)s)"
    " FROM escalations WHERE status = ANY(%(waiting)s) GROUP BY priority"
)


def metrics_of(factory: Factory) -> Metrics | None:
    """The factory's ``Metrics`` instrument, if it has one."""
    return next((i for i in factory.instruments if isinstance(i, Metrics)), None)


async def snapshot(factory: Factory, *, timeout_s: float = SNAPSHOT_TIMEOUT_S) -> Snapshot:
    """The shared state now; a part whose service failed or was slow is None."""
    (runs, waiting, late), (alive, backlog) = await asyncio.gather(
        _postgres(factory, timeout_s), _redis(factory, timeout_s)
    )
    return Snapshot(
        runs_by_status=runs,
        open_escalations_by_priority=waiting,
        escalations_past_sla=late,
        workers_alive=alive,
        broker_backlog=backlog,
    )


Counts = dict[str, int]


async def _postgres(factory: Factory, timeout_s: float) -> tuple[Counts | None, Counts | None, Counts | None]:
    try:
        async with asyncio.timeout(timeout_s), factory.pool.connection(timeout=timeout_s) as conn:
            runs = await (await conn.execute(_RUNS)).fetchall()
            params = {"now": datetime.now(UTC), "waiting": [s.value for s in WAITING]}
            waiting = await (await conn.execute(_WAITING, params)).fetchall()
    except (PostgresError, OSError, TimeoutError) as exc:
        log.warning("metrics: PostgreSQL could not be read for the snapshot: %s", exc or type(exc).__name__)
        return None, None, None
    by_status = {s.value: 0 for s in RunStatus} | {str(status): int(n) for status, n in runs}
    open_ = {p.value: 0 for p in Priority} | {str(p): int(n) for p, n, _ in waiting}
    late = {p.value: 0 for p in Priority} | {str(p): int(n) for p, _, n in waiting}
    return by_status, open_, late


async def _redis(factory: Factory, timeout_s: float) -> tuple[int | None, Counts | None]:
    try:
        async with asyncio.timeout(timeout_s):
            backlog = await factory.broker.backlog(ALL_TEAMS)
            # workers_alive reads an unreachable Redis as no worker: asked only once Redis answered.
            alive = len(await workers_alive(factory.redis, factory.settings.redis_prefix))
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("metrics: Redis could not be read for the snapshot: %s", exc or type(exc).__name__)
        return None, None
    return alive, {team: counts["stream"] for team, counts in backlog.items()}


async def keep_fresh(factory: Factory, metrics: Metrics, stop: asyncio.Event, *, every_s: float) -> None:
    """Apply a new snapshot every ``every_s`` until ``stop`` is set: for a process whose ``/metrics``
    is served from a thread (``serve_metrics``, the worker), which cannot read the services at a scrape."""
    while not stop.is_set():
        metrics.apply(await snapshot(factory, timeout_s=min(SNAPSHOT_TIMEOUT_S, every_s)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
