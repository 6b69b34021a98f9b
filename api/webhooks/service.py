"""The webhooks service every front door calls (CLI, REST): register, list, remove, read the
delivery log and the dead letter, replay, send a test ping; and ``serve``, which the worker runs:
the dispatcher (live events → deliveries) and the delivery loop, side by side, until stopped."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx

from api.webhooks.base import (
    PING,
    Attempt,
    Delivery,
    DeliveryPolicy,
    DeliveryStatus,
    EventSource,
    Registered,
    Webhook,
    WebhookFormat,
    WebhookNotFound,
    WebhookStore,
)
from api.webhooks.delivery import DeliveryLoop, Sender, http_client
from api.webhooks.dispatch import Dispatcher
from api.webhooks.formats import render
from api.webhooks.guarded import Resolver, system_resolver
from api.webhooks.signing import new_secret
from api.webhooks.validation import check_events, check_format, check_id, check_url, new_delivery_id, new_webhook_id
from factory.errors import ConfigError, InputError
from observability.base import Event

log = logging.getLogger(__name__)
MAX_LAST = 1000


class Webhooks:
    """Webhooks on a store; ``source`` (a consumer of the live event stream) is needed by ``serve``
    only. Receivers in the factory's own network (loopback, private, link-local, …) are refused at
    registration and at each delivery unless ``allow_private`` (``api/webhooks/addresses.py``).
    ``transport`` replaces the network (tests), ``resolver`` the DNS lookups a delivery makes."""

    def __init__(
        self,
        store: WebhookStore,
        policy: DeliveryPolicy | None = None,
        *,
        source: EventSource | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        log_days: float | None = 30.0,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.store = store
        self.policy = policy or DeliveryPolicy()
        self._source = source
        self._transport = transport
        self._log_days = log_days
        self._allow_private = allow_private
        self._resolver = resolver

    async def add(
        self, url: str, events: Sequence[str], *, fmt: str | WebhookFormat = "json", by: str | None = None
    ) -> Registered:
        """Register a receiver of ``events``; its signing secret is in the result, and never again."""
        checked_url = check_url(url, allow_private=self._allow_private)
        checked_events, checked_format = check_events(events), check_format(fmt)
        if self._source is not None:  # events from now on are kept for the dispatcher, even before it runs
            await self._source.prepare()
        secret = new_secret()
        hook = await self.store.add(new_webhook_id(), checked_url, checked_events, checked_format, secret, by=by)
        log.info("webhook %s added for %s (%s)%s", hook.id, ", ".join(hook.events), hook.format.value,
                 f" by {by}" if by else "")  # fmt: skip
        return Registered(webhook=hook, secret=secret)

    async def list(self) -> builtins.list[Webhook]:
        return await self.store.list()

    async def get(self, webhook_id: str) -> Webhook:
        found = await self.store.get(check_id(webhook_id))
        if found is None:
            raise _no_webhook(webhook_id)
        return found

    async def remove(self, webhook_id: str, *, by: str | None = None) -> None:
        """Remove a webhook with its delivery log and dead letter; nothing more is sent to it."""
        if not await self.store.remove(check_id(webhook_id)):
            raise _no_webhook(webhook_id)
        log.info("webhook %s removed%s", webhook_id, f" by {by}" if by else "")

    async def set_active(self, webhook_id: str, active: bool) -> Webhook:
        """Pause (deliveries wait, none is made for new events) or resume a webhook."""
        found = await self.store.set_active(check_id(webhook_id), active)
        if found is None:
            raise _no_webhook(webhook_id)
        return found

    async def deliveries(
        self, *, webhook_id: str | None = None, status: str | DeliveryStatus | None = None, last: int = 50
    ) -> builtins.list[Delivery]:
        """The delivery log, newest first: at most ``last`` rows, of one webhook and one status if given."""
        checked = _status(status) if status is not None else None
        hook = check_id(webhook_id) if webhook_id is not None else None
        return await self.store.deliveries(webhook_id=hook, status=checked, last=_last(last))

    async def dead(self, *, webhook_id: str | None = None, last: int = 100) -> builtins.list[Delivery]:
        """The dead letter, newest first: deliveries whose every attempt failed."""
        return await self.deliveries(webhook_id=webhook_id, status=DeliveryStatus.DEAD, last=last)

    async def replay(self, delivery_id: str, *, by: str | None = None) -> Delivery:
        """A dead delivery sent again: back to pending, due now, its attempts reset."""
        replayed = await self.store.replay(check_id(delivery_id, "delivery"))
        if replayed is None:
            found = await self.store.get_delivery(delivery_id)
            if found is None:
                raise WebhookNotFound(f"no delivery {delivery_id!r}; see `factory webhooks deliveries`")
            raise InputError(
                f"delivery {delivery_id} is {found.status.value}, not dead; only a dead delivery is replayed"
            )
        log.info("webhook delivery %s replayed from the dead letter%s", delivery_id, f" by {by}" if by else "")
        return replayed

    async def replay_all(self, *, webhook_id: str | None = None, by: str | None = None) -> int:
        """Every dead delivery (of one webhook, if given) sent again; how many."""
        hook = check_id(webhook_id) if webhook_id is not None else None
        if hook is not None and await self.store.get(hook) is None:
            raise _no_webhook(hook)
        count = await self.store.replay_all(webhook_id=hook)
        log.info("%d webhook deliveries replayed from the dead letter%s%s", count,
                 f" of {hook}" if hook else "", f" by {by}" if by else "")  # fmt: skip
        return count

    async def test(self, webhook_id: str) -> Attempt:
        """Send a signed ping (``webhook.test``) to the webhook now, once; what it answered. Not stored."""
        target = await self.store.target(check_id(webhook_id))
        if target is None:
            raise _no_webhook(webhook_id)
        event = Event(type=PING, run_id="-", data={"webhook_id": target.webhook_id}, at=datetime.now(UTC))
        delivery_id = new_delivery_id()
        async with self._client() as client:
            sender = Sender(client, timeout_s=self.policy.timeout_s)
            return await sender.send(target, delivery_id, PING, render(target.format, delivery_id, event))

    async def serve(self, stop: asyncio.Event) -> None:
        """Dispatch live events into deliveries and deliver them until ``stop`` is set (the worker
        runs this); each loop stops within about a second and the requests in flight within their
        timeout."""
        if self._source is None:
            raise ConfigError("webhooks were built without a source of live events; build them with wiring.webhooks")
        wake = asyncio.Event()
        dispatcher = Dispatcher(self._source, self.store, on_stored=wake.set)
        async with self._client() as client:
            loop = DeliveryLoop(
                self.store, Sender(client, timeout_s=self.policy.timeout_s), self.policy, log_days=self._log_days
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(dispatcher.serve(stop))
                group.create_task(loop.serve(stop, wake))

    def _client(self) -> httpx.AsyncClient:
        return http_client(self.policy, self._transport, allow_private=self._allow_private, resolver=self._resolver)


def _no_webhook(webhook_id: str) -> WebhookNotFound:
    return WebhookNotFound(f"no webhook {webhook_id!r}; see `factory webhooks list`")


def _status(status: str | DeliveryStatus) -> DeliveryStatus:
    try:
        return DeliveryStatus(str(status).strip().lower())
    except ValueError as exc:
        known = ", ".join(s.value for s in DeliveryStatus)
        raise InputError(f"unknown delivery status {str(status)[:40]!r}; choose one of {known}") from exc


def _last(last: int) -> int:
    if not 1 <= last <= MAX_LAST:
        raise InputError(f"the number of deliveries to show (--last) must be from 1 to {MAX_LAST}; it was {last}")
    return last
