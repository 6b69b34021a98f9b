"""In-memory twin of the webhook store, for unit tests (the same contract suite runs on both).
Secrets are sealed with a box as in PostgreSQL, so a twin holds no secret in plain text either."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from api.webhooks.base import Claimed, Delivery, DeliveryStatus, Target, Webhook, WebhookFormat
from api.webhooks.validation import shown_url
from routing.secrets import Sealed, SecretBox


def sealed_name(webhook_id: str) -> str:
    """What a webhook's secret is sealed under (a ciphertext opens for its own webhook only)."""
    return f"webhook:{webhook_id}"


class InMemoryWebhookStore:
    """``WebhookStore`` in dicts; ``clock`` gives the time (due dates are compared with it)."""

    def __init__(self, box: SecretBox | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self._box = box or SecretBox.generate()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._hooks: dict[str, tuple[Webhook, str, Sealed]] = {}  # id -> (shown, full url, sealed secret)
        self._rows: dict[str, Delivery] = {}
        self._claims: dict[str, str] = {}

    async def add(
        self, webhook_id: str, url: str, events: Sequence[str], fmt: WebhookFormat, secret: str, *, by: str | None
    ) -> Webhook:
        hook = Webhook(id=webhook_id, url=shown_url(url), events=list(events), format=fmt, created_at=self._clock(),
                       created_by=by)  # fmt: skip
        self._hooks[webhook_id] = (hook, url, self._box.seal(sealed_name(webhook_id), secret))
        return hook.model_copy()

    async def list(self) -> builtins.list[Webhook]:
        return [h.model_copy() for h, _, _ in sorted(self._hooks.values(), key=lambda t: (t[0].created_at, t[0].id))]

    async def get(self, webhook_id: str) -> Webhook | None:
        found = self._hooks.get(webhook_id)
        return found[0].model_copy() if found else None

    async def target(self, webhook_id: str) -> Target | None:
        found = self._hooks.get(webhook_id)
        if found is None:
            return None
        hook, url, sealed = found
        return Target(hook.id, url, hook.format, self._box.open(sealed_name(hook.id), sealed))

    async def remove(self, webhook_id: str) -> bool:
        if self._hooks.pop(webhook_id, None) is None:
            return False
        for row in [r for r in self._rows.values() if r.webhook_id == webhook_id]:
            del self._rows[row.id]
        return True

    async def set_active(self, webhook_id: str, active: bool) -> Webhook | None:
        found = self._hooks.get(webhook_id)
        if found is None:
            return None
        hook = found[0].model_copy(update={"active": active})
        self._hooks[webhook_id] = (hook, found[1], found[2])
        return hook.model_copy()

    async def enqueue(self, deliveries: Sequence[Delivery]) -> int:
        taken = {(r.webhook_id, r.event_id) for r in self._rows.values()}
        new = 0
        for d in deliveries:
            if d.webhook_id not in self._hooks or (d.webhook_id, d.event_id) in taken or d.id in self._rows:
                continue
            now = self._clock()
            self._rows[d.id] = d.model_copy(deep=True, update={"status": DeliveryStatus.PENDING, "attempts": 0,
                                                               "next_attempt_at": now, "created_at": now})  # fmt: skip
            taken.add((d.webhook_id, d.event_id))
            new += 1
        return new

    async def claim(
        self, limit: int, *, per_webhook: int, busy: Mapping[str, int], lease_s: float
    ) -> builtins.list[Claimed]:
        now, token = self._clock(), secrets.token_hex(8)
        held = dict(busy)
        due = sorted(
            (r for r in self._rows.values() if r.status is DeliveryStatus.PENDING and r.next_attempt_at
             and r.next_attempt_at <= now and self._hooks[r.webhook_id][0].active),
            key=lambda r: (r.next_attempt_at or now, r.id),
        )  # fmt: skip
        claimed: builtins.list[Claimed] = []
        for row in due:
            if len(claimed) >= limit or held.get(row.webhook_id, 0) >= per_webhook:
                continue
            held[row.webhook_id] = held.get(row.webhook_id, 0) + 1
            changed = row.model_copy(update={"attempts": row.attempts + 1,
                                             "next_attempt_at": now + timedelta(seconds=lease_s)})  # fmt: skip
            self._rows[row.id], self._claims[row.id] = changed, token
            target = await self.target(row.webhook_id)
            assert target is not None
            claimed.append(Claimed(changed.model_copy(deep=True), target, token))
        return claimed

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
        row = self._rows.get(delivery_id)
        if row is None or row.status is not DeliveryStatus.PENDING or self._claims.get(delivery_id) != token:
            return False
        now = self._clock()
        self._rows[delivery_id] = row.model_copy(
            update={
                "status": status, "last_status": http_status, "last_error": error,
                "next_attempt_at": now + timedelta(seconds=retry_in_s) if status is DeliveryStatus.PENDING else None,
                "delivered_at": now if status is DeliveryStatus.DELIVERED else None,
            }
        )  # fmt: skip
        del self._claims[delivery_id]
        return True

    async def deliveries(
        self, *, webhook_id: str | None = None, status: DeliveryStatus | None = None, last: int = 50
    ) -> builtins.list[Delivery]:
        rows = [r for r in self._rows.values() if (webhook_id is None or r.webhook_id == webhook_id)
                and (status is None or r.status is status)]  # fmt: skip
        rows.sort(key=lambda r: (r.created_at or self._clock(), r.id), reverse=True)
        return [r.model_copy(deep=True) for r in rows[:last]]

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        found = self._rows.get(delivery_id)
        return found.model_copy(deep=True) if found else None

    async def replay(self, delivery_id: str) -> Delivery | None:
        row = self._rows.get(delivery_id)
        if row is None or row.status is not DeliveryStatus.DEAD:
            return None
        self._rows[delivery_id] = row.model_copy(
            update={"status": DeliveryStatus.PENDING, "attempts": 0, "next_attempt_at": self._clock(),
                    "replays": row.replays + 1},
        )  # fmt: skip
        return self._rows[delivery_id].model_copy(deep=True)

    async def replay_all(self, *, webhook_id: str | None = None, limit: int = 10_000) -> int:
        dead = [r.id for r in self._rows.values() if r.status is DeliveryStatus.DEAD
                and (webhook_id is None or r.webhook_id == webhook_id)][:limit]  # fmt: skip
        for delivery_id in dead:
            await self.replay(delivery_id)
        return len(dead)

    async def prune(self, *, older_than_days: float, limit: int = 1000) -> int:
        before = self._clock() - timedelta(days=older_than_days)
        old = [r.id for r in self._rows.values() if r.status is DeliveryStatus.DELIVERED and r.delivered_at
               and r.delivered_at < before][:limit]  # fmt: skip
        for delivery_id in old:
            del self._rows[delivery_id]
        return len(old)
