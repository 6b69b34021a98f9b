"""The live event stream on Redis: one trimmed stream per run plus a factory-wide stream.

Events are a view of a run, not its record (PostgreSQL is), so publishing is kept off the run's
path: ``emit`` only queues; a background task sends what was queued within ``linger_s`` in one
pipelined batch. The queue is bounded (the oldest events are dropped, and counted, when Redis
cannot keep up) and ``aclose`` flushes what is left within a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from observability.base import Event

log = logging.getLogger(__name__)


class RedisEventStream:
    """XADDs every event to ``{prefix}events:{run_id}`` and ``{prefix}events``, trimmed."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        maxlen: int = 10_000,
        queue_limit: int = 10_000,
        batch: int = 256,
        linger_s: float = 0.01,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._maxlen = maxlen
        self._queue: deque[Event] = deque(maxlen=queue_limit)
        self._batch = batch
        self._linger_s = linger_s
        self._close_timeout_s = close_timeout_s
        self._wake = asyncio.Event()  # something was queued
        self._idle = asyncio.Event()  # nothing queued and nothing in flight
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[Event] = []  # taken off the queue, being sent
        self._closing = False
        self.dropped = 0  # events lost to a full queue
        self.failed = 0  # events Redis refused or never got

    def run_stream(self, run_id: str) -> str:
        return f"{self._prefix}events:{run_id}"

    async def emit(self, event: Event) -> None:
        if self._closing:
            await self._send([event])
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("live events are queued faster than Redis takes them; %d dropped", self.dropped)
        self._queue.append(event)
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._publish(), name="factory-event-stream")

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued event was sent (or given up on), at most ``timeout_s``."""
        if self._task is None or self._task.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s if timeout_s is not None else self._close_timeout_s)

    async def aclose(self) -> None:
        """Send what is queued (within the close timeout), then stop the publisher; never raises."""
        await self.flush()
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        lost = len(self._queue) + len(self._in_flight)
        if lost:
            log.warning("%d live events not published before shutdown", lost)
            self.failed += lost
            self._queue.clear()
            self._in_flight = []

    async def _publish(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            self._idle.clear()
            # A short wait gathers the events that follow into the same round trip.
            await asyncio.sleep(self._linger_s)
            self._in_flight = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            await self._send(self._in_flight)
            self._in_flight = []

    async def _send(self, events: list[Event]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    fields = {"type": event.type, "json": event.model_dump_json()}
                    pipe.xadd(self.run_stream(event.run_id), fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                    pipe.xadd(f"{self._prefix}events", fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        except Exception as exc:  # Redis gone, or an event it cannot take: the run's record is in PostgreSQL
            if not isinstance(exc, RedisError | OSError):
                log.exception("live events could not be encoded")
            self.failed += len(events)
            log.warning("%d live events (first %s of run %s) not published: %s", len(events), events[0].type,
                        events[0].run_id, exc)  # fmt: skip


async def tail_events(
    redis: Redis,
    stream: str,
    *,
    start: str = "$",
    block_ms: int = 1000,
    count: int = 512,
    max_backoff_s: float = 5.0,
) -> AsyncIterator[tuple[str, list[Event]]]:
    """Follow ``stream`` from after ``start``: yields (last id, events), an empty list when a block
    passed with nothing new (so a reader can check whether to stop). Redis going away is waited out
    with a bounded backoff, resuming after the last id seen (nothing is skipped that Redis kept)."""
    last, backoff = start, 0.1
    while True:
        try:
            got = await redis.xread({stream: last}, block=block_ms, count=count)
        except (RedisError, OSError) as exc:
            log.warning("live events of %s unreadable (%s); retrying in %.1fs", stream, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)
            continue
        backoff = 0.1
        events: list[Event] = []
        for _, entries in got or ():
            for entry_id, fields in entries:
                last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                raw = fields.get(b"json") or fields.get("json")
                try:
                    events.append(Event.model_validate_json(raw))
                except (ValueError, TypeError):  # not ours, or from a newer version: skipped, not fatal
                    log.warning("skipped a malformed live event %s in %s", last, stream)
        yield last, events
