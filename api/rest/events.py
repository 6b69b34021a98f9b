"""``/v1/runs/{id}/events``: a run's live events as Server-Sent Events, resumable.

Each event is sent with its id in the run's Redis stream (``id:``), its type (``event:``) and the
event as JSON (``data:``). A client that lost its connection reconnects with ``Last-Event-ID`` (the
browser's EventSource does it by itself) and receives exactly the events after it: nothing missed,
nothing repeated, as long as the run's stream still holds them (it keeps the last 10 000). Without
one, the stream starts at the run's first event. The stream ends after the run's final event
(completed, failed, cancelled), after ``FACTORY_API_SSE_MAX_S`` (the client reconnects), or when its
token was revoked; a run that ended with nothing after the given id answers 204 (a browser's
EventSource then stops reconnecting). A comment is sent every ``KEEPALIVE_S`` so proxies keep an idle
stream open. Streams are limited per token and in all (each holds a Redis connection while it waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.problems import Problem
from api.rest.app import State, Viewer
from factory.errors import InputError, RunNotFound, ServiceUnavailable
from factory.tokens import ApiToken
from observability.base import Event
from observability.redis_stream import read_after

log = logging.getLogger(__name__)
router = APIRouter(tags=["runs"])

FINAL = frozenset({"run.completed", "run.failed", "run.cancelled"})
KEEPALIVE_S = 15.0  # also how often the token is checked again (a revoked one ends the stream)
BLOCK_MS = 1000  # below the Redis client's socket timeout, so a quiet stream is no error
RETRY_MS = 2000  # what the client waits before reconnecting
_ENTRY_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_U64 = 2**64 - 1


def frame(entry_id: str, event: Event) -> str:
    return f"id: {entry_id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


def entry_id(text: str) -> str:
    """``text`` as a Redis stream entry id (``ms-seq``), or ``InputError``."""
    found = _ENTRY_ID.fullmatch(text)
    if found is None or any(int(part) > _U64 for part in found.groups() if part is not None):
        raise InputError(f"Last-Event-ID {text[:40]!r} is not an event id of this stream (like 1733480000000-0)")
    return text


class Streams:
    """Live streams open now, per token and in all, within the settings' limits (each holds a Redis
    connection while it waits)."""

    def __init__(self, per_token: int, total: int) -> None:
        self.per_token, self.total = per_token, total
        self._open: dict[str, int] = {}

    def check(self, token: ApiToken) -> None:
        """429 (503 for the total) when ``token`` may not open one more stream now."""
        held = self._open.get(token.id, 0)
        if held >= self.per_token:
            raise Problem(429, f"token {token.name!r} has {held} live event streams open, its limit"
                               " (FACTORY_API_SSE_PER_TOKEN); close one first", kind="too-many-streams",
                          headers={"Retry-After": "5"})  # fmt: skip
        if sum(self._open.values()) >= self.total:
            raise Problem(503, "the API serves as many live event streams as it may (FACTORY_API_SSE_TOTAL);"
                               " retry shortly", kind="too-many-streams", headers={"Retry-After": "5"})  # fmt: skip

    @contextlib.contextmanager
    def opened(self, token: ApiToken) -> Iterator[None]:
        """Count one stream of ``token`` while the block runs."""
        self._open[token.id] = self._open.get(token.id, 0) + 1
        try:
            yield
        finally:
            self._open[token.id] -= 1
            if not self._open[token.id]:
                del self._open[token.id]


@router.get(
    "/runs/{run_id}/events",
    summary="The run's live events (text/event-stream); reconnect with Last-Event-ID to resume.",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 204: {"description": "The run ended; nothing follows."}},
)
async def run_events(
    run_id: str,
    request: Request,
    api: State,
    token: Viewer,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        str | None, Query(description="Same as Last-Event-ID, for clients that cannot set headers.")
    ] = None,
) -> Response:
    start = entry_id((last_event_id or after or "0").strip())
    f = api.ops.factory
    if await f.store.get_run(run_id) is None:
        raise RunNotFound(f"no run {run_id!r}")
    stream = f.stream.run_stream(run_id)
    if await _finished(api, run_id) and not await read_after(f.redis, stream, start, count=1):
        return Response(status_code=204)  # an EventSource stops reconnecting on 204
    limit_s, header = api.settings.api_sse_max_s, request.headers.get("authorization")
    streams: Streams = request.app.state.streams

    async def events() -> AsyncIterator[str]:
        with streams.opened(token):
            loop = asyncio.get_running_loop()
            ends, quiet_since, cursor, backoff = loop.time() + limit_s, loop.time(), start, 0.1
            yield f"retry: {RETRY_MS}\n\n"
            while loop.time() < ends:
                try:
                    batch = await read_after(f.redis, stream, cursor, block_ms=BLOCK_MS)
                    if not batch and await _finished(api, run_id):  # its last events may still be on their way
                        batch = await read_after(f.redis, stream, cursor)
                        ended = True
                    else:
                        ended = False
                except ServiceUnavailable as exc:  # Redis away: wait it out (bounded by the stream's lifetime)
                    log.warning("live events of run %s unreadable (%s); retrying", run_id, exc)
                    yield ": live events unavailable, retrying\n\n"
                    await asyncio.sleep(backoff)
                    backoff = min(5.0, backoff * 2)
                    continue
                backoff = 0.1
                for got_id, event in batch:
                    cursor = got_id
                    if event is not None:
                        yield frame(got_id, event)
                        ended = ended or event.type in FINAL
                if ended:
                    return
                if batch:
                    quiet_since = loop.time()
                elif loop.time() - quiet_since >= KEEPALIVE_S:
                    quiet_since = loop.time()
                    try:
                        await api.guard.authenticate(header)  # revoked since? the stream ends
                    except Problem:
                        return
                    yield ": keep-alive\n\n"

    streams.check(token)  # refused here (429/503), before the stream starts
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _finished(api: State, run_id: str) -> bool:
    from teams.base import RunStatus

    run = await api.ops.factory.store.get_run(run_id)
    return run is None or run.status in (RunStatus.COMPLETE, RunStatus.FAILED, RunStatus.CANCELLED)
