"""In-process event fan-out: subscribers are plain callables (the CLI's progress display)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from observability.base import Event, EventSink

log = logging.getLogger(__name__)


class LocalEventBus:
    """Calls every subscriber synchronously; a failing subscriber is logged and skipped."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._subscribers.append(callback)

    async def emit(self, event: Event) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed on %s", event.type)


class FanOut:
    """Sends each event to several sinks in order."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self._sinks = tuple(sinks)

    async def emit(self, event: Event) -> None:
        for sink in self._sinks:
            await sink.emit(event)
