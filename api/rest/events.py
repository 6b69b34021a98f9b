"""``/v1/runs/{id}/events``: a run's live events as Server-Sent Events, resumable.

Each event is sent with its id in the run's Redis stream (``id:``), its type (``event:``) and the
event as JSON (``data:``). A client that lost its connection reconnects with ``Last-Event-ID`` (the
browser's EventSource does it by itself) and receives exactly the events after it: nothing missed,
nothing repeated, as long as the run's stream still holds them (it keeps the last 10 000). Without
one, the stream starts at the run's first event. The stream ends after the run's final event
(completed, failed, cancelled), or after ``FACTORY_API_SSE_MAX_S`` (the client reconnects). A comment
is sent every ``KEEPALIVE_S`` so proxies keep an idle stream open.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.rest.app import State, Viewer
from factory.errors import InputError, RunNotFound
from observability.base import Event
from observability.redis_stream import read_after

log = logging.getLogger(__name__)
router = APIRouter(tags=["runs"])

FINAL = frozenset({"run.completed", "run.failed", "run.cancelled"})
KEEPALIVE_S = 15.0
BLOCK_MS = 1000  # below the Redis client's socket timeout, so a quiet stream is no error
RETRY_MS = 2000  # what the client waits before reconnecting
_ENTRY_ID = re.compile(r"\d{1,20}(-\d{1,20})?")


def frame(entry_id: str, event: Event) -> str:
    return f"id: {entry_id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


@router.get(
    "/runs/{run_id}/events",
    summary="The run's live events (text/event-stream); reconnect with Last-Event-ID to resume.",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def run_events(
    run_id: str,
    api: State,
    _: Viewer,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        str | None, Query(description="Same as Last-Event-ID, for clients that cannot set headers.")
    ] = None,
) -> StreamingResponse:
    start = (last_event_id or after or "0").strip()
    if not _ENTRY_ID.fullmatch(start):
        raise InputError(f"Last-Event-ID {start[:40]!r} is not an event id of this stream (like 1733480000000-0)")
    f = api.ops.factory
    if await f.store.get_run(run_id) is None:
        raise RunNotFound(f"no run {run_id!r}")
    stream = f.stream.run_stream(run_id)
    limit_s = api.settings.api_sse_max_s

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        ends, quiet_since, cursor, backoff = loop.time() + limit_s, loop.time(), start, 0.1
        yield f"retry: {RETRY_MS}\n\n"
        while loop.time() < ends:
            try:
                batch = await read_after(f.redis, stream, cursor, block_ms=BLOCK_MS)
            except Exception as exc:  # Redis away: wait it out (bounded by the stream's lifetime)
                log.warning("live events of run %s unreadable (%s); retrying", run_id, exc)
                yield ": live events unavailable, retrying\n\n"
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            backoff = 0.1
            final = False
            for entry_id, event in batch:
                cursor = entry_id
                if event is not None:
                    yield frame(entry_id, event)
                    final = final or event.type in FINAL
            if final:
                return
            if batch:
                quiet_since = loop.time()
            elif await _finished(api, run_id):
                return  # everything the stream held was sent and the run will add nothing more
            elif loop.time() - quiet_since >= KEEPALIVE_S:
                quiet_since = loop.time()
                yield ": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _finished(api: State, run_id: str) -> bool:
    from teams.base import RunStatus

    run = await api.ops.factory.store.get_run(run_id)
    return run is None or run.status in (RunStatus.COMPLETE, RunStatus.FAILED, RunStatus.CANCELLED)
