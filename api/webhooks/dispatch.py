"""From live events to deliveries: the dispatcher reads the factory's event stream as one consumer
of a group and stores a pending delivery per subscribed webhook, then acknowledges the events.

Nothing on a run's path waits for this: the pipeline only appends to the stream. Any number of
dispatchers can share the group (each event is handed to one); an event handed twice (its consumer
died after storing, before acknowledging) makes no second delivery, since a delivery is unique per
(webhook, event id). Events are acknowledged only after their deliveries are stored. A body is made
storable first (no NUL, no lone surrogate: what PostgreSQL's jsonb refuses), so no event can stall
the dispatch by failing its insert again and again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from api.webhooks.base import EVENT_TYPES, Delivery, EventSource, WebhookStore
from api.webhooks.formats import render
from api.webhooks.validation import new_delivery_id
from factory.errors import FactoryError
from observability.text import storable_data

log = logging.getLogger(__name__)
_KNOWN = frozenset(EVENT_TYPES)


class Dispatcher:
    """Turns each live event into the deliveries of the active webhooks subscribed to its type."""

    def __init__(
        self,
        source: EventSource,
        store: WebhookStore,
        *,
        on_stored: Callable[[], None] = lambda: None,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._source = source
        self._store = store
        self._on_stored = on_stored  # wakes the local delivery loop
        self._max_backoff_s = max_backoff_s

    async def step(self) -> int:
        """Read one batch (waiting a bounded time), store its deliveries, acknowledge it; how many
        deliveries were new."""
        batch = await self._source.read()
        if not batch:
            return 0
        wanted = [(entry_id, event) for entry_id, event in batch if event.type in _KNOWN]
        rows: list[Delivery] = []
        if wanted:
            hooks = [w for w in await self._store.list() if w.active]
            for entry_id, event in wanted:
                for hook in hooks:
                    if event.type not in hook.events:
                        continue
                    delivery_id = new_delivery_id()
                    rows.append(
                        Delivery(
                            id=delivery_id,
                            webhook_id=hook.id,
                            event_type=event.type,
                            event_id=entry_id,
                            run_id=event.run_id,
                            payload=storable_data(render(hook.format, delivery_id, event)),
                        )
                    )
        stored = await self._store.enqueue(rows) if rows else 0
        await self._source.ack([entry_id for entry_id, _ in batch])
        if stored:
            self._on_stored()
        return stored

    async def serve(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; a service that is away is waited out (bounded backoff), and
        what it had handed out is read again, from the group's pending entries, when it is back."""
        backoff = 0.1
        while not stop.is_set():
            try:
                await self.step()
                backoff = 0.1
            except Exception as exc:
                log.warning("webhook dispatch failed (%s); retrying in %.1fs", exc, backoff,
                            exc_info=not isinstance(exc, FactoryError))  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(self._max_backoff_s, backoff * 2)
