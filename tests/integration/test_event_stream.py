"""The live event stream: published off the run's path, in order, flushed on close, bounded, and
never failing a run when Redis is gone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from observability.base import Event
from observability.redis_stream import RedisEventStream

pytestmark = pytest.mark.integration


def event(n: int, run: str = "run-1") -> Event:
    return Event(type=f"step.{n}", run_id=run, data={"n": n}, at=datetime.now(UTC))


async def test_events_arrive_in_order_and_close_flushes_them(redis: Redis, redis_prefix: str) -> None:
    stream = RedisEventStream(redis, prefix=redis_prefix, linger_s=0.05)
    for n in range(300):
        await stream.emit(event(n))
    await stream.aclose()
    sent = await redis.xrange(f"{redis_prefix}events:run-1")
    assert [fields[b"type"].decode() for _id, fields in sent] == [f"step.{n}" for n in range(300)]
    assert await redis.xlen(f"{redis_prefix}events") == 300
    assert (stream.dropped, stream.failed) == (0, 0)


async def test_a_full_queue_drops_the_oldest_and_counts_them(redis: Redis, redis_prefix: str) -> None:
    stream = RedisEventStream(redis, prefix=redis_prefix, queue_limit=10, linger_s=0.05)
    for n in range(25):  # all queued before the publisher's first send
        await stream.emit(event(n))
    await stream.aclose()
    sent = await redis.xrange(f"{redis_prefix}events:run-1")
    assert [fields[b"type"].decode() for _id, fields in sent] == [f"step.{n}" for n in range(15, 25)]
    assert stream.dropped == 15


async def test_redis_gone_never_fails_the_emitter() -> None:
    gone = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    stream = RedisEventStream(gone, prefix="test:", linger_s=0.0, close_timeout_s=2)
    for n in range(5):
        await stream.emit(event(n))
    await stream.aclose()
    await gone.aclose()
    assert stream.failed == 5
