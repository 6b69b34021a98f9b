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
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

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


async def read_after(
    redis: Redis, stream: str, after: str, *, block_ms: int = 0, count: int = 256
) -> list[tuple[str, Event | None]]:
    """The events of ``stream`` after entry id ``after`` (``0``: from its start), each with its id,
    waiting up to ``block_ms`` for a first one (0: not at all). For readers that resume where they
    stopped (an SSE client's Last-Event-ID). Redis unreachable: ``ServiceUnavailable`` (the caller
    retries); Redis refusing the read (an id it cannot take): ``InputError``. A malformed entry comes as
    (id, None): logged and skipped, its id still moves the reader on."""
    from factory.errors import InputError, ServiceUnavailable

    try:
        if block_ms > 0:
            got = await redis.xread({stream: after}, block=block_ms, count=count)
            entries = [entry for _, listed in got or () for entry in listed]
        else:
            entries = await redis.xrange(stream, min=f"({after}" if after != "0" else "-", count=count)
    except ResponseError as exc:
        raise InputError(f"Redis refused reading {stream} after {after[:40]!r}: {exc}") from exc
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"Redis is unreachable for reading {stream} ({exc})") from exc
    out: list[tuple[str, Event | None]] = []
    for entry_id, fields in entries:
        key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        raw = fields.get(b"json") or fields.get("json")
        try:
            out.append((key, Event.model_validate_json(raw)))
        except (ValueError, TypeError):
            log.warning("skipped a malformed live event %s in %s", key, stream)
            out.append((key, None))
    return out


class StreamGroupReader:
    """One consumer of a Redis consumer group on ``stream``: each entry goes to one consumer of the
    group, which acknowledges it (``ack``) once it has been handled. Entries a consumer took and never
    acknowledged (it died) are taken over by a live one after ``claim_idle_s`` (``XAUTOCLAIM``, at
    most ``count`` at a time), so any number of processes can share the work and none loses an entry.

    The group is created on first use at ``start`` (``$``: only entries added from then on), and again
    if the stream was deleted. Redis errors come out as ``ServiceUnavailable``; the caller waits and
    reads again. Malformed entries are acknowledged and skipped (logged), never handed out.
    """

    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        start: str = "$",
        count: int = 100,
        block_ms: int = 1000,
        claim_idle_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self.stream, self.group, self.consumer = stream, group, consumer
        self._start = start
        self._count = count
        self._block_ms = block_ms  # below the client's socket timeout, so a blocked read is not an error
        self._claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self._ready = False
        self._cursor = "0-0"  # where the next XAUTOCLAIM scan of the group's pending entries goes on
        self._next_claim = 0.0  # loop time of the next reclaim scan

    async def prepare(self) -> None:
        """Create the group if missing (at ``start``), so entries added from now on are kept for it."""
        from factory.errors import ServiceUnavailable

        try:
            await self._ensure_group()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"Redis is unreachable for creating group {self.group} of {self.stream} ({exc})"
            ) from exc

    async def read(self) -> list[tuple[str, Event]]:
        """The next entries for this consumer: reclaimed ones first, else new ones (waiting at most
        ``block_ms``; an empty list when none came)."""
        from factory.errors import ServiceUnavailable

        try:
            await self._ensure_group()
            entries = await self._reclaim()
            if not entries:
                got = await self._redis.xreadgroup(
                    self.group, self.consumer, {self.stream: ">"}, count=self._count, block=self._block_ms
                )
                entries = [entry for _, listed in got or () for entry in listed]
            return await self._events(entries)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream (and its group) was deleted: made again on the next read
                self._ready = False
                return []
            raise ServiceUnavailable(f"Redis refused reading {self.stream} as group {self.group}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is unreachable for reading {self.stream} ({exc}); retrying") from exc

    async def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge handled entries (they are never handed out again)."""
        from factory.errors import ServiceUnavailable

        if not ids:
            return
        try:
            await self._redis.xack(self.stream, self.group, *ids)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"Redis is unreachable for acknowledging entries of {self.stream} ({exc})"
            ) from exc

    async def prune(self, idle_s: float) -> list[str]:
        """Remove the group's other consumers that hold nothing and were idle longer than ``idle_s``
        (processes long gone); their names are returned."""
        from factory.errors import ServiceUnavailable

        try:
            consumers = await self._redis.xinfo_consumers(self.stream, self.group)
            gone = [
                _text(c["name"])
                for c in consumers
                if int(c["pending"]) == 0 and int(c["idle"]) > idle_s * 1000 and _text(c["name"]) != self.consumer
            ]
            for name in gone:
                await self._redis.xgroup_delconsumer(self.stream, self.group, name)
            return gone
        except ResponseError:  # no stream or no group yet: nobody to prune
            return []
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is unreachable for pruning consumers of {self.stream} ({exc})") from exc

    async def _ensure_group(self) -> None:
        if self._ready:
            return
        try:
            await self._redis.xgroup_create(self.stream, self.group, id=self._start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready = True

    async def _reclaim(self) -> list[tuple[Any, Any]]:
        """A bounded slice of entries other consumers left unacknowledged too long, taken over; one
        scan of the pending list at a time, at most every half ``claim_idle_s``."""
        now = asyncio.get_running_loop().time()
        if now < self._next_claim:
            return []
        got = await self._redis.xautoclaim(
            self.stream, self.group, self.consumer, self._claim_idle_ms, start_id=self._cursor, count=self._count
        )
        cursor, entries = _text(got[0]), [(i, f) for i, f in got[1] if f is not None]
        self._cursor = cursor
        if cursor == "0-0":  # the scan is over: the next one after a pause
            self._next_claim = now + self._claim_idle_ms / 2000
        if entries:
            log.info("took over %d entries of %s that another consumer of %s left", len(entries), self.stream,
                     self.group)  # fmt: skip
        return entries

    async def _events(self, entries: list[tuple[Any, Any]]) -> list[tuple[str, Event]]:
        events: list[tuple[str, Event]] = []
        malformed: list[str] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            raw = fields.get(b"json") or fields.get("json")
            try:
                events.append((entry_id, Event.model_validate_json(raw)))
            except (ValueError, TypeError):  # not ours, or from a newer version: skipped, not fatal
                log.warning("skipped a malformed live event %s in %s", entry_id, self.stream)
                malformed.append(entry_id)
        if malformed:
            await self._redis.xack(self.stream, self.group, *malformed)
        return events


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
