"""Delivery on the in-memory twin and httpx's mock transport: retries with backoff, the dead letter
and replay, redirects, timeouts, and dispatch that is idempotent per (webhook, event)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import httpx
import pytest

from api.webhooks import DeliveryPolicy, DeliveryStatus, Webhooks, verify_signature
from api.webhooks.dispatch import Dispatcher
from api.webhooks.in_memory import InMemoryWebhookStore
from factory.errors import InputError
from observability.base import Event

FAST = DeliveryPolicy(attempts=3, backoff_s=0.01, backoff_cap_s=0.05, timeout_s=0.5, concurrency=4, poll_s=0.02)


class ListSource:
    """An ``EventSource`` over a list: each read hands out what was added since; acks are kept."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, Event]] = []
        self.acked: list[str] = []

    def add(self, entry_id: str, event_type: str, run_id: str = "run-1") -> None:
        self.waiting.append(
            (entry_id, Event(type=event_type, run_id=run_id, data={"id": "esc-1"}, at=datetime.now(UTC)))
        )

    async def prepare(self) -> None:
        return None

    async def read(self) -> list[tuple[str, Event]]:
        batch, self.waiting = self.waiting, []
        if not batch:
            await asyncio.sleep(0.01)
        return batch

    async def ack(self, ids: Sequence[str]) -> None:
        self.acked.extend(ids)


def receiver(answers: list[int], seen: list[httpx.Request]) -> httpx.MockTransport:
    """Answers each request with the next status of ``answers`` (the last one repeats)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers[min(len(seen), len(answers)) - 1])

    return httpx.MockTransport(handle)


async def until(check: Callable[[], object], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in time")


async def serve_until(service: Webhooks, check: Callable[[], object]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(service.serve(stop))
    try:
        await until(check)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_500_is_retried_until_the_receiver_takes_it() -> None:
    seen: list[httpx.Request] = []
    store, source = InMemoryWebhookStore(), ListSource()
    service = Webhooks(store, FAST, source=source, transport=receiver([500, 502, 200], seen))
    added = await service.add("https://example.com/hook", ["escalation.opened"])
    source.add("1-0", "escalation.opened")
    source.add("2-0", "stage.started")  # not a webhook event: acknowledged, never delivered
    await serve_until(service, lambda: len(seen) == 3)
    [delivery] = await service.deliveries()
    assert (delivery.status, delivery.attempts, delivery.last_status) == (DeliveryStatus.DELIVERED, 3, 200)
    assert {r.headers["Factory-Delivery"] for r in seen} == {delivery.id}  # one id on every retry
    for request in seen:
        assert verify_signature(added.secret, request.headers["Factory-Signature"], request.content) > 0
        assert request.headers["Factory-Event"] == "escalation.opened"
    assert source.acked == ["1-0", "2-0"]


async def test_a_receiver_that_always_fails_ends_in_the_dead_letter_and_replay_delivers() -> None:
    seen: list[httpx.Request] = []
    answers = [500]
    store, source = InMemoryWebhookStore(), ListSource()
    service = Webhooks(store, FAST, source=source, transport=receiver(answers, seen))
    await service.add("https://example.com/hook", ["run.failed"], fmt="slack")
    source.add("1-0", "run.failed")
    await serve_until(service, lambda: len(seen) == 3)
    await until(lambda: store._rows and next(iter(store._rows.values())).status is DeliveryStatus.DEAD)
    [dead] = await service.dead()
    assert (dead.attempts, dead.last_status, dead.last_error) == (3, 500, "the receiver answered 500")

    answers[:] = [500, 500, 500, 200]
    replayed = await service.replay(dead.id, by="ana")
    assert (replayed.status, replayed.attempts, replayed.replays) == (DeliveryStatus.PENDING, 0, 1)
    await serve_until(service, lambda: len(seen) == 4)
    await until(lambda: next(iter(store._rows.values())).status is DeliveryStatus.DELIVERED)
    assert await service.dead() == []
    with pytest.raises(InputError, match="is delivered, not dead"):
        await service.replay(dead.id)


async def test_retry_after_and_backoff_bound_the_wait() -> None:
    policy = DeliveryPolicy(backoff_s=1.0, backoff_cap_s=60.0)
    assert [policy.delay_s(n, 0.0) for n in (1, 2, 3, 8)] == [0.5, 1.0, 2.0, 30.0]
    assert [policy.delay_s(n, 0.999999) for n in (1, 7, 20)] == pytest.approx([1.0, 60.0, 60.0], rel=1e-5)


@pytest.mark.parametrize(
    ("status", "location", "delivered", "says"),
    [
        (307, "https://elsewhere.example/hook", False, "another host, which is never followed"),
        (302, "https://example.com/other", False, "changes the method is not followed"),
        (308, "/moved", True, None),
    ],
)
async def test_redirects_are_followed_only_to_the_same_origin(
    status: int, location: str, delivered: bool, says: str | None
) -> None:
    hits: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        hits.append(str(request.url))
        if request.url.path == "/hook":
            return httpx.Response(status, headers={"Location": location})
        return httpx.Response(204)

    service = Webhooks(InMemoryWebhookStore(), FAST, transport=httpx.MockTransport(handle))
    added = await service.add("https://example.com/hook", ["run.failed"])
    attempt = await service.test(added.webhook.id)
    assert attempt.ok is delivered
    assert all(hit.startswith("https://example.com/") for hit in hits)  # never elsewhere
    if says:
        assert attempt.error is not None and says in attempt.error


async def test_a_receiver_that_never_answers_is_cut_at_the_timeout() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    policy = DeliveryPolicy(timeout_s=0.2)
    service = Webhooks(InMemoryWebhookStore(), policy, transport=httpx.MockTransport(handle))
    added = await service.add("https://example.com/hook?token=s3cret", ["run.failed"])
    attempt = await service.test(added.webhook.id)
    assert not attempt.ok and attempt.error == "no answer within 0.2s" and attempt.elapsed_ms < 1000


async def test_dispatch_is_idempotent_per_webhook_and_event() -> None:
    store, source = InMemoryWebhookStore(), ListSource()
    service = Webhooks(store, FAST, source=source)
    one = (await service.add("https://a.example/", ["escalation.opened", "run.failed"])).webhook
    two = (await service.add("https://b.example/", ["run.failed"], fmt="discord")).webhook
    paused = (await service.add("https://c.example/", ["run.failed"])).webhook
    await service.set_active(paused.id, False)
    dispatcher = Dispatcher(source, store)
    source.add("1-0", "escalation.opened")
    source.add("2-0", "run.failed")
    assert await dispatcher.step() == 3
    source.add("2-0", "run.failed")  # handed again (its consumer died before acknowledging it)
    assert await dispatcher.step() == 0
    rows = await service.deliveries()
    assert sorted((d.webhook_id, d.event_id) for d in rows) == sorted(
        [(one.id, "1-0"), (one.id, "2-0"), (two.id, "2-0")]
    )
    discord_row = next(d for d in rows if d.webhook_id == two.id)
    assert "content" in discord_row.payload and discord_row.payload["embeds"][0]["footer"]["text"].endswith(
        discord_row.id
    )


async def test_claims_are_bounded_per_webhook() -> None:
    store = InMemoryWebhookStore()
    service = Webhooks(store, FAST)
    slow = (await service.add("https://slow.example/", ["run.failed"])).webhook
    fast = (await service.add("https://fast.example/", ["run.failed"])).webhook
    source = ListSource()
    for n in range(5):
        source.add(f"{n}-0", "run.failed")
    await Dispatcher(source, store).step()
    claimed = await store.claim(8, per_webhook=2, busy={slow.id: 1}, lease_s=30)
    counts = {hook: sum(c.target.webhook_id == hook for c in claimed) for hook in (slow.id, fast.id)}
    assert counts == {slow.id: 1, fast.id: 2}
    assert all(c.delivery.attempts == 1 for c in claimed)
    assert await store.claim(8, per_webhook=2, busy={}, lease_s=30) != []  # the rest, not those claimed
    stale = claimed[0]
    assert await store.finish(stale.delivery.id, "another-token", DeliveryStatus.DELIVERED, http_status=200,
                              error=None) is False  # fmt: skip
