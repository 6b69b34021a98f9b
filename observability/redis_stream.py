"""The live event stream on Redis: one trimmed stream per run plus a factory-wide stream."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from observability.base import Event

log = logging.getLogger(__name__)


class RedisEventStream:
    """XADDs every event to ``{prefix}events:{run_id}`` and ``{prefix}events``, trimmed."""

    def __init__(self, redis: Redis, *, prefix: str, maxlen: int = 10_000) -> None:
        self._redis = redis
        self._prefix = prefix
        self._maxlen = maxlen

    def run_stream(self, run_id: str) -> str:
        return f"{self._prefix}events:{run_id}"

    async def emit(self, event: Event) -> None:
        fields = {"type": event.type, "json": event.model_dump_json()}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.run_stream(event.run_id), fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.xadd(f"{self._prefix}events", fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        except RedisError as exc:
            # Events are a view of the run, not its record (Postgres is): never fail the run.
            log.warning("live event %s for run %s not published: %s", event.type, event.run_id, exc)
