"""The background worker (``factory worker``): the SLA ladder, and runs that can move again.

Two loops, each step bounded: every ``poll_s`` the ladder ticks over the waiting escalations;
and runs are resumed when the operator decided what they waited on, or when the process that
drove them died (a ``running`` run nobody holds). A run is driven by one process at a time (its
lease); a worker skips runs another process holds. The worker announces itself in Redis so the
CLI can tell the operator whether a decision will be picked up on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from factory.errors import FactoryError, RunBusy
from factory.wiring import Factory
from teams.base import RunStatus
from teams.pipeline import RunOutcome

log = logging.getLogger(__name__)


def worker_key(prefix: str) -> str:
    return f"{prefix}worker:{socket.gethostname()}:{os.getpid()}"


def wake_key(prefix: str) -> str:
    return f"{prefix}runs:wake"


async def wake_workers(redis: Redis, prefix: str, run_id: str) -> None:
    """Tell a waiting worker a run was submitted (best effort: without it, the next poll finds it)."""
    with contextlib.suppress(RedisError, OSError):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.lpush(wake_key(prefix), run_id)
            pipe.ltrim(wake_key(prefix), 0, 999)
            pipe.expire(wake_key(prefix), 60)
            await pipe.execute()


async def workers_alive(redis: Redis, prefix: str) -> list[str]:
    """The workers that announced themselves within their heartbeat's lifetime."""
    try:
        return [key.decode() async for key in redis.scan_iter(match=f"{prefix}worker:*", count=100)]
    except (RedisError, OSError):
        return []


@dataclass
class WorkerStep:
    """What one resume pass did."""

    resumed: list[RunOutcome] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # held by another process
    failed: list[tuple[str, str]] = field(default_factory=list)


class Worker:
    """Resumes runs and keeps the SLA ladder moving; see the module docstring."""

    def __init__(self, factory: Factory, *, poll_s: float, max_runs_per_pass: int = 20) -> None:
        self._f = factory
        self._poll_s = poll_s
        self._max_runs = max_runs_per_pass

    async def resume_pass(self) -> WorkerStep:
        """Drive every run that can move: decided escalations, or a driver that is gone."""
        step = WorkerStep()
        # Runs still waiting on an open escalation are left out before the limit, so a decided run
        # is never starved by a long queue of undecided ones.
        waiting = sorted({e.run_id for e in await self._f.escalations.list_open()})
        movable = await self._f.store.runs_with_status(
            [RunStatus.RUNNING, RunStatus.WAITING_HUMAN], limit=self._max_runs, exclude=waiting
        )
        for run in movable:
            try:
                outcome = await self._f.engine.drive(run.id)
            except RunBusy:
                step.busy.append(run.id)
                continue
            except Exception as exc:  # one bad run never stops the others (the run keeps its state)
                log.warning("worker could not resume %s: %s", run.id, exc, exc_info=not isinstance(exc, FactoryError))
                step.failed.append((run.id, str(exc)))
                continue
            if outcome.timings or outcome.run.status is not run.status:
                log.info("worker resumed %s: %s", run.id, outcome.run.status.value)
                step.resumed.append(outcome)
        return step

    async def serve(self, stop: asyncio.Event) -> None:
        """Run both loops and the heartbeat until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._every(stop, self._ladder_step, "sla ladder"))
            group.create_task(self._every(stop, self.resume_pass, "resume", wait=self._woken))
            group.create_task(self._every(stop, self._heartbeat, "heartbeat"))
        with contextlib.suppress(RedisError, OSError):
            await self._f.redis.delete(worker_key(self._f.settings.redis_prefix))

    async def _ladder_step(self) -> None:
        for escalation in await self._f.desk.tick():
            log.info("sla ladder: %s at level %d (%s)", escalation.id, escalation.escalation_level,
                     escalation.status.value)  # fmt: skip

    async def _heartbeat(self) -> None:
        ttl = max(5, int(self._poll_s * 3) + 1)
        await self._f.redis.set(worker_key(self._f.settings.redis_prefix), "1", ex=ttl)

    async def _woken(self, stop: asyncio.Event) -> None:
        """Wait ``poll_s``, or less when a run is submitted (``wake_workers``) or the worker stops."""
        deadline = asyncio.get_running_loop().time() + self._poll_s
        key = wake_key(self._f.settings.redis_prefix)
        while not stop.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:  # in slices shorter than the client's socket timeout, so a stop is seen within one
                if await self._f.redis.blpop([key], timeout=max(0.1, min(left, 1.0))):  # type: ignore[misc]
                    return
            except (RedisError, OSError):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), left)
                return

    async def _every(
        self,
        stop: asyncio.Event,
        step: Callable[[], Awaitable[object]],
        name: str,
        wait: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    ) -> None:
        while not stop.is_set():
            try:
                await step()
            except Exception as exc:  # a service that comes back is used again on the next pass
                known = isinstance(exc, FactoryError | RedisError | OSError)
                log.warning("worker %s step failed: %s", name, exc, exc_info=not known)
            if wait is not None:
                await wait(stop)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)
