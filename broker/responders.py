"""Running responders: one task per team in this process, stopped together."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from broker.base import Answerer, ClarificationBroker
from teams.slugs import TeamSlug


def consumer_name() -> str:
    """Unique per process, readable in ``XINFO CONSUMERS``: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@asynccontextmanager
async def responding(
    broker: ClarificationBroker, answerer: Answerer, teams: Sequence[TeamSlug], *, consumer: str | None = None
) -> AsyncIterator[asyncio.Event]:
    """Serve ``teams`` until the block ends (or the yielded event is set); then stop them all."""
    stop = asyncio.Event()
    name = consumer or consumer_name()
    tasks = [asyncio.create_task(broker.serve(t, answerer, consumer=name, stop=stop)) for t in teams]
    try:
        yield stop
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
