"""The background worker (``factory worker``): the SLA ladder, runs that can move again, and
group-chat sessions nobody drives.

Three loops, each step bounded: every ``poll_s`` the ladder ticks over the waiting escalations;
runs are resumed when the operator decided what they waited on, or when the process that drove
them died (a ``running`` run nobody holds); and group-chat sessions (ids ``gc-…``) are driven when a
front door hands one over (``wake_workers`` with its id) or when one is left running with nobody
driving it (its driver died). A run or a session is driven by one process at a time (its lease); a
worker skips what another process holds. The worker announces itself in Redis so front doors can
tell whether a run, a decision or a session will be picked up on its own. Beside them, ``serve_worker``
delivers webhooks (api/webhooks): live events become signed deliveries, sent with bounded retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from factory.errors import FactoryError, RunBusy
from factory.wiring import Factory
from factory.worker_groupchats import GROUPCHAT_ID_PREFIX, GroupChatDrives
from observability.logs import log_context
from teams.base import RunStatus
from teams.lease import Lease
from teams.pipeline import RunOutcome

log = logging.getLogger(__name__)


def worker_key(prefix: str) -> str:
    return f"{prefix}worker:{socket.gethostname()}:{os.getpid()}"


def wake_key(prefix: str) -> str:
    return f"{prefix}runs:wake"


async def wake_workers(redis: Redis, prefix: str, run_id: str) -> None:
    """Tell a waiting worker a run was submitted, or hand it a group-chat session to drive (its
    ``gc-…`` id); best effort: without it, the next poll finds either."""
    with contextlib.suppress(RedisError, OSError):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.lpush(wake_key(prefix), run_id)
            pipe.ltrim(wake_key(prefix), 0, 999)
            pipe.expire(wake_key(prefix), 60)
            await pipe.execute()


async def wake_if_alive(redis: Redis, prefix: str, run_id: str) -> bool:
    """``wake_workers`` and ``workers_alive`` in one round trip: whether a worker is alive to take
    ``run_id`` (a wake-up nobody reads expires with its list)."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(registry_key(prefix), time.time(), "+inf", start=0, num=1)
            pipe.lpush(wake_key(prefix), run_id)
            pipe.ltrim(wake_key(prefix), 0, 999)
            pipe.expire(wake_key(prefix), 60)
            alive, *_ = await pipe.execute()
    except (RedisError, OSError):
        return False
    return bool(alive)


def registry_key(prefix: str) -> str:
    """A sorted set of the workers' keys, scored by when their heartbeat expires (one read finds the
    live ones: no SCAN over a keyspace the factory may share with others)."""
    return f"{prefix}workers"


async def announce_worker(redis: Redis, prefix: str, key: str, ttl_s: float) -> None:
    """Say that the worker ``key`` is alive for the next ``ttl_s`` (its heartbeat)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(key, "1", ex=max(1, int(ttl_s)))
        pipe.zadd(registry_key(prefix), {key: time.time() + ttl_s})
        pipe.zremrangebyscore(registry_key(prefix), "-inf", time.time() - 60)  # long-dead workers
        pipe.expire(registry_key(prefix), max(60, int(ttl_s * 4)))
        await pipe.execute()


async def retire_worker(redis: Redis, prefix: str, key: str) -> None:
    """The worker ``key`` stops: it is no longer counted alive."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(key)
        pipe.zrem(registry_key(prefix), key)
        await pipe.execute()


async def workers_alive(redis: Redis, prefix: str) -> list[str]:
    """The workers that announced themselves within their heartbeat's lifetime."""
    try:
        keys = await redis.zrangebyscore(registry_key(prefix), time.time(), "+inf")
    except (RedisError, OSError):
        return []
    return [key.decode() if isinstance(key, bytes) else str(key) for key in keys]


@dataclass
class WorkerStep:
    """What one resume pass did."""

    resumed: list[RunOutcome] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # held by another process
    failed: list[tuple[str, str]] = field(default_factory=list)


#: The statuses of runs a worker can move: submitted or orphaned (running), or decided (waiting).
MOVABLE = (RunStatus.RUNNING, RunStatus.WAITING_HUMAN)


class Worker:
    """Drives runs from the run queue and keeps the SLA ladder moving; see the module docstring."""

    def __init__(
        self,
        factory: Factory,
        *,
        poll_s: float,
        max_runs_per_pass: int = 20,
        concurrency: int = 1,
        groupchats: int = 2,
        stop_grace_s: float = 5.0,
        on_active: Callable[[int], None] | None = None,
    ) -> None:
        self._f = factory
        self._poll_s = poll_s
        self._max_runs = max_runs_per_pass
        self._concurrency = concurrency
        self._stop_grace_s = stop_grace_s
        self._on_active = on_active or (lambda _n: None)
        self.groupchats = GroupChatDrives(factory, poll_s=poll_s, concurrency=groupchats)

    async def _waiting(self) -> list[str]:
        """Runs still waiting on an open escalation: never claimed (nothing to do until it is decided)."""
        return sorted({e.run_id for e in await self._f.escalations.list_open(brief=True)})  # no contexts

    async def claim(self, exclude: Sequence[str] = ()) -> Lease | None:
        """The next run nobody drives, claimed for this worker (its lease), or None."""
        return await self._f.store.claim(MOVABLE, exclude=[*await self._waiting(), *exclude])

    async def _drive(self, lease: Lease, step: WorkerStep | None = None) -> None:
        """Drive a claimed run while holding its lease; what happened goes to ``step`` when given."""
        with log_context(run_id=lease.run_id):
            async with self._f.store.holding(lease):
                try:
                    outcome = await self._f.engine.drive(lease.run_id, lease=lease)
                except Exception as exc:  # one bad run never stops the others (the run keeps its state)
                    log.warning("worker could not drive %s: %s", lease.run_id, exc,
                                exc_info=not isinstance(exc, FactoryError))  # fmt: skip
                    if step is not None:
                        step.failed.append((lease.run_id, str(exc)))
                    return
            if outcome.timings or outcome.run.status is not RunStatus.WAITING_HUMAN:  # it moved
                log.info("worker drove %s: %s", lease.run_id, outcome.run.status.value)
                if step is not None:
                    step.resumed.append(outcome)

    async def _take_from_the_dead(self, step: WorkerStep, exclude: set[str]) -> list[str]:
        """Runs held by a dead process of this host: taken over at once rather than at expiry."""
        taken = []
        for run_id in await self._f.store.held_by_the_dead(MOVABLE, limit=self._max_runs):
            if run_id in exclude:
                continue
            try:
                with log_context(run_id=run_id):
                    outcome = await self._f.engine.drive(run_id)
                    log.info("worker drove %s (its driver had died): %s", run_id, outcome.run.status.value)
            except RunBusy:
                step.busy.append(run_id)
                continue
            except Exception as exc:
                log.warning("worker could not resume %s: %s", run_id, exc, exc_info=not isinstance(exc, FactoryError))
                step.failed.append((run_id, str(exc)))
                continue
            step.resumed.append(outcome)
            taken.append(run_id)
        return taken

    async def resume_pass(self) -> WorkerStep:
        """Drive, one after the other, every run that can move (at most ``max_runs_per_pass``):
        submitted, decided, or left by a driver that is gone."""
        step = WorkerStep()
        done: set[str] = set()
        while len(done) < self._max_runs:
            lease = await self.claim(sorted(done))
            if lease is None:
                break
            done.add(lease.run_id)
            await self._drive(lease, step)
        done.update(await self._take_from_the_dead(step, done))
        return step

    async def serve(self, stop: asyncio.Event) -> None:
        """Drive runs (``concurrency`` at once), group chats, the SLA ladder and the heartbeat until
        ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._every(stop, self._ladder_step, "sla ladder"))
            group.create_task(self._drive_runs(stop))
            group.create_task(self.groupchats.serve(stop))
            group.create_task(self._every(stop, self._heartbeat, "heartbeat"))
        with contextlib.suppress(RedisError, OSError):
            prefix = self._f.settings.redis_prefix
            await retire_worker(self._f.redis, prefix, worker_key(prefix))

    async def _drive_runs(self, stop: asyncio.Event) -> None:
        """The queue loop: claim while a slot is free; wait for a slot, a wake-up or the poll; on
        stop, give the runs in hand ``stop_grace_s`` to finish, then stop them (each loses at most its
        stage in flight, which the next worker runs again)."""
        active: dict[str, asyncio.Task[None]] = {}
        done: set[str] = set()  # driven since the last poll: not claimed again before it
        while not stop.is_set():
            try:
                while len(active) < self._concurrency and not stop.is_set():
                    lease = await self.claim(sorted({*active, *done}))
                    if lease is None:
                        break
                    active[lease.run_id] = asyncio.create_task(self._drive(lease), name=f"drive {lease.run_id}")
                if len(active) < self._concurrency:
                    done.update(await self._take_from_the_dead(WorkerStep(), {*active, *done}))
            except Exception as exc:  # a service that comes back is used again on the next pass
                known = isinstance(exc, FactoryError | RedisError | OSError)
                log.warning("worker claim failed: %s", exc, exc_info=not known)
            self._on_active(len(active))
            waker = asyncio.create_task(self._woken(stop))
            finished, _ = await asyncio.wait([waker, *active.values()], return_when=asyncio.FIRST_COMPLETED)
            if waker in finished:
                done.clear()  # a new poll: every run may be looked at again
            else:
                waker.cancel()
                await asyncio.gather(waker, return_exceptions=True)
            for run_id, task in list(active.items()):
                if task.done():
                    del active[run_id]
                    done.add(run_id)
        if active:
            _, pending = await asyncio.wait(active.values(), timeout=self._stop_grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*active.values(), return_exceptions=True)
        self._on_active(0)

    async def _ladder_step(self) -> None:
        for escalation in await self._f.desk.tick():
            log.info("sla ladder: %s at level %d (%s)", escalation.id, escalation.escalation_level,
                     escalation.status.value)  # fmt: skip

    async def _heartbeat(self) -> None:
        prefix = self._f.settings.redis_prefix
        await announce_worker(self._f.redis, prefix, worker_key(prefix), max(5, int(self._poll_s * 3) + 1))

    async def _woken(self, stop: asyncio.Event) -> None:
        """Wait ``poll_s``, or less when a run is submitted (``wake_workers``) or the worker stops. A
        wake-up naming a group-chat session goes to the group-chat loop (this one waits on)."""
        deadline = asyncio.get_running_loop().time() + self._poll_s
        key = wake_key(self._f.settings.redis_prefix)
        while not stop.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:  # in slices shorter than the client's socket timeout, so a stop is seen within one
                popped = await self._f.redis.blpop([key], timeout=max(0.1, min(left, 1.0)))  # type: ignore[misc]
                if popped:
                    named = popped[1].decode(errors="replace")
                    if not named.startswith(GROUPCHAT_ID_PREFIX):
                        return
                    self.groupchats.wake(named)
            except (RedisError, OSError):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), left)
                return

    async def _every(self, stop: asyncio.Event, step: Callable[[], Awaitable[object]], name: str) -> None:
        while not stop.is_set():
            try:
                await step()
            except Exception as exc:  # a service that comes back is used again on the next pass
                known = isinstance(exc, FactoryError | RedisError | OSError)
                log.warning("worker %s step failed: %s", name, exc, exc_info=not known)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)


async def serve_worker(factory: Factory, stop: asyncio.Event) -> None:
    """``factory worker``: the run queue, the SLA ladder, webhooks and the heartbeat, and Prometheus ``/metrics``
    on ``metrics_port`` (when set), its shared gauges refreshed from PostgreSQL and Redis in the
    background (the scrape is answered from a thread, which cannot read them)."""
    from factory.metrics_snapshot import keep_fresh, metrics_of
    from observability.metrics import serve_metrics

    settings = factory.settings
    metrics = metrics_of(factory)
    work = Worker(
        factory,
        poll_s=settings.worker_poll_s,
        concurrency=settings.worker_runs,
        groupchats=settings.worker_groupchats,
        on_active=metrics.set_worker_active_runs if metrics is not None else None,
    )
    server = (
        serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
        if metrics and settings.metrics_port
        else None
    )
    if server is not None:
        log.info("worker metrics at http://%s:%d/metrics", settings.metrics_host, server.port)
    try:
        async with asyncio.TaskGroup() as group:
            if metrics is not None:
                group.create_task(keep_fresh(factory, metrics, stop, every_s=max(5.0, settings.worker_poll_s)))
            group.create_task(work.serve(stop))  # announced at once: front doors leave runs to it
            if factory.router is not None:  # LiteLLM's import takes seconds: now, not in the first run's stage
                group.create_task(_warm(factory))
            group.create_task(deliver_webhooks(factory, stop))
    finally:
        if server is not None:
            server.close()


async def deliver_webhooks(factory: Factory, stop: asyncio.Event) -> None:
    """Webhooks beside the runs: live events become deliveries, sent with retries. Runs never wait
    on it (they only append to the event stream), and its trouble never stops the worker."""
    from factory.wiring import webhook_events, webhooks

    try:
        with contextlib.suppress(FactoryError):  # consumers of processes long gone: tidied, best effort
            await webhook_events(factory).prune(idle_s=86_400)
        await webhooks(factory).serve(stop)
    except Exception as exc:
        log.warning("worker stopped delivering webhooks: %s", exc, exc_info=not isinstance(exc, FactoryError))


async def _warm(factory: Factory) -> None:
    """Import LiteLLM ahead of the first run; a failure here is the first run's to report."""
    assert factory.router is not None
    try:
        await factory.router.ready()
    except Exception as exc:
        log.warning("worker could not load LiteLLM ahead of its first run: %s", exc)
