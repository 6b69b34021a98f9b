"""Contracts of webhooks: what is registered, what is delivered, and the two boundaries the
service works through — a source of live events and a store of webhooks and deliveries.

A webhook is shown without its whole URL (``Webhook.url`` is the shown form): a Slack or Discord
incoming-webhook URL is itself a credential. The full URL and the signing secret only leave the
store as a ``Target``, for the sender, and a ``Target``'s repr shows neither.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel

from factory.errors import InputError
from observability.base import Event

#: The live events a webhook can subscribe to, as the pipeline and the decision desk emit them.
EVENT_TYPES: tuple[str, ...] = (
    "escalation.opened",  # a run waits on a human
    "escalation.sla",  # the SLA ladder raised an open escalation's level
    "escalation.decided",  # answered, approved, rejected or expired
    "escalation.deferred",  # put off: it waits on, with a new deadline
    "run.completed",
    "run.failed",
    "run.cancelled",
)
#: The type of the signed ping ``test`` sends (never subscribed to, never stored).
PING = "webhook.test"


class WebhookFormat(StrEnum):
    """The body sent: the factory's own JSON, or a message Slack's or Discord's incoming webhooks post."""

    JSON = "json"
    SLACK = "slack"
    DISCORD = "discord"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or being attempted)
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # every attempt failed: in the dead letter until replayed


class WebhookNotFound(InputError):
    """No webhook (or delivery) with that id; nothing was changed."""


class SignatureError(InputError):
    """A request's ``Factory-Signature`` is missing, malformed, too old, or does not match the body."""


class Webhook(BaseModel):
    """A registered receiver of some event types."""

    id: str
    url: str  # the shown form (origin and a hint of the path), never the whole URL
    events: list[str]
    format: WebhookFormat
    active: bool = True
    created_at: datetime
    created_by: str | None = None


class Registered(BaseModel):
    """What registering a webhook returns: the webhook, and its signing secret — shown this once."""

    webhook: Webhook
    secret: str


class Delivery(BaseModel):
    """One event for one webhook: a row of the delivery log."""

    id: str  # sent as Factory-Delivery; receivers drop an id they have seen
    webhook_id: str
    event_type: str
    event_id: str  # the live event's stream id: with webhook_id, unique (dispatch is idempotent)
    run_id: str | None = None
    payload: dict[str, Any]  # the body sent, as JSON
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_status: int | None = None  # the last HTTP status the receiver answered
    last_error: str | None = None  # short, never a secret nor the URL
    next_attempt_at: datetime | None = None
    created_at: datetime | None = None
    delivered_at: datetime | None = None
    replays: int = 0  # times it was sent back from the dead letter


@dataclass(frozen=True)
class Target:
    """Where and how one webhook is sent to. Its repr shows neither the URL nor the secret."""

    webhook_id: str
    url: str = field(repr=False)
    format: WebhookFormat
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Claimed:
    """A due delivery taken by one sender (``token`` fences its outcome: a sender whose claim
    lapsed and was taken over by another records nothing)."""

    delivery: Delivery
    target: Target
    token: str


@dataclass(frozen=True)
class Attempt:
    """What one HTTP attempt gave: ``ok`` on a 2xx answer."""

    ok: bool
    status: int | None = None
    error: str | None = None
    elapsed_ms: float = 0.0
    retry_after_s: float | None = None  # the receiver's Retry-After (429/503), if it gave one


class EventSource(Protocol):
    """Live events for one consumer of a group: each event is handed to one consumer, and handed
    again (to any) until acknowledged. ``read`` waits a bounded time and may return nothing."""

    async def prepare(self) -> None:
        """Make sure events from now on are kept for this source's group (even before any reader runs)."""
        ...

    async def read(self) -> list[tuple[str, Event]]: ...

    async def ack(self, ids: Sequence[str]) -> None: ...


class WebhookStore(Protocol):
    """Webhooks (their secrets sealed) and the delivery log, shared by every process."""

    async def add(
        self, webhook_id: str, url: str, events: Sequence[str], fmt: WebhookFormat, secret: str, *, by: str | None
    ) -> Webhook: ...

    async def list(self) -> builtins.list[Webhook]: ...

    async def get(self, webhook_id: str) -> Webhook | None: ...

    async def target(self, webhook_id: str) -> Target | None: ...

    async def remove(self, webhook_id: str) -> bool: ...

    async def set_active(self, webhook_id: str, active: bool) -> Webhook | None: ...

    async def enqueue(self, deliveries: Sequence[Delivery]) -> int:
        """Store new pending deliveries; one already stored for (webhook, event id) is left as it is.
        Returns how many were new."""
        ...

    async def claim(
        self, limit: int, *, per_webhook: int, busy: Mapping[str, int], lease_s: float
    ) -> builtins.list[Claimed]:
        """Take up to ``limit`` due deliveries of active webhooks (at most ``per_webhook`` of one
        webhook, counting the ``busy`` ones this sender has in flight): each counts an attempt and is
        not due again for ``lease_s`` unless its outcome is recorded first."""
        ...

    async def finish(
        self,
        delivery_id: str,
        token: str,
        status: DeliveryStatus,
        *,
        http_status: int | None,
        error: str | None,
        retry_in_s: float = 0.0,
    ) -> bool:
        """Record a claimed attempt's outcome (``pending`` again: due in ``retry_in_s``); False if the
        claim was taken over meanwhile (nothing recorded)."""
        ...

    async def deliveries(
        self, *, webhook_id: str | None = None, status: DeliveryStatus | None = None, last: int = 50
    ) -> builtins.list[Delivery]: ...

    async def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    async def replay(self, delivery_id: str) -> Delivery | None:
        """A dead delivery back to pending, due now, its attempts reset; None if it is not dead."""
        ...

    async def replay_all(self, *, webhook_id: str | None = None, limit: int = 10_000) -> int:
        """Every dead delivery (of one webhook, or all; at most ``limit``) back to pending; how many."""
        ...

    async def prune(self, *, older_than_days: float, limit: int = 1000) -> int:
        """Remove at most ``limit`` delivered rows delivered over ``older_than_days`` ago; how many."""
        ...


@dataclass(frozen=True)
class DeliveryPolicy:
    """How deliveries are attempted: bounded attempts, exponential backoff with jitter, a timeout a
    request, and bounded concurrency (in all, and a webhook)."""

    attempts: int = 5
    backoff_s: float = 1.0
    backoff_cap_s: float = 60.0
    timeout_s: float = 5.0
    concurrency: int = 8
    per_webhook: int = 2
    poll_s: float = 1.0

    def delay_s(self, attempt: int, jitter: float) -> float:
        """Wait before the attempt after ``attempt`` (1-based): base·2^(attempt-1), capped, scaled by
        ``jitter`` in [0, 1) into its upper half (so retries of many deliveries spread out)."""
        base = min(self.backoff_cap_s, self.backoff_s * 2.0 ** max(0, attempt - 1))
        return base * (0.5 + jitter / 2)

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery is held by its sender: its timeout, redirects, and a margin."""
        return self.timeout_s * 4 + 5.0


__all__ = [
    "EVENT_TYPES",
    "PING",
    "Attempt",
    "Claimed",
    "Delivery",
    "DeliveryPolicy",
    "DeliveryStatus",
    "EventSource",
    "Registered",
    "SignatureError",
    "Target",
    "Webhook",
    "WebhookFormat",
    "WebhookNotFound",
    "WebhookStore",
]
