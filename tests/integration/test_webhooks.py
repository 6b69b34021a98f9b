"""Webhooks on the real services (issue 18, part 4): live events through Redis, deliveries in
PostgreSQL, and a real HTTP receiver on loopback that checks every signature. Retries on 500, the
dead letter and replay, Slack and Discord bodies, two dispatchers sharing the stream, a dead receiver
that slows no other webhook, and a run's escalation reaching the receiver. (Loopback is the factory's
own network: every service here allows it, as FACTORY_WEBHOOK_ALLOW_PRIVATE=true does; refusing it by
default is tested in tests/unit/api/test_webhook_addresses.py.)"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr
from redis.asyncio import Redis

from api.webhooks import (
    Delivery,
    DeliveryPolicy,
    DeliveryStatus,
    WebhookFormat,
    Webhooks,
    WebhookStore,
    verify_signature,
)
from api.webhooks.in_memory import InMemoryWebhookStore
from factory.migrations import migrate
from factory.settings import Settings
from factory.webhooks_pg import PostgresWebhookStore
from factory.wiring import CONNECTION_KWARGS, open_factory, webhooks
from observability.base import Event
from observability.redis_stream import RedisEventStream, StreamGroupReader
from routing.scripted import ScriptedModel
from routing.secrets import SecretBox
from teams.base import RunStatus
from tests.integration.pgbouncer import PgBouncer

pytestmark = pytest.mark.integration
FAST = DeliveryPolicy(attempts=3, backoff_s=0.05, backoff_cap_s=0.2, timeout_s=2.0, concurrency=8, per_webhook=2,
                      poll_s=0.05)  # fmt: skip


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on 127.0.0.1 (a thread): each path answers the next status of its plan
    (the last repeats; 200 when none), after its delay; every request is recorded on arrival."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.plans: dict[str, list[int]] = {}
        self.delays: dict[str, float] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner._lock:
                    owner.requests.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                    count = sum(r.path == self.path for r in owner.requests)
                    plan = owner.plans.get(self.path, [200])
                    status, delay = plan[min(count, len(plan)) - 1], owner.delays.get(self.path, 0.0)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=8, kwargs=CONNECTION_KWARGS) as opened:
        yield opened


@pytest.fixture
def box() -> SecretBox:
    return SecretBox.generate()


@pytest.fixture
def make(pool: AsyncConnectionPool, redis: Redis, redis_prefix: str, box: SecretBox) -> Callable[..., Webhooks]:
    """Webhooks on the test's database and event stream, as consumer ``consumer`` of the group."""

    def build(consumer: str = "c1", policy: DeliveryPolicy = FAST, claim_idle_s: float = 30.0) -> Webhooks:
        source = StreamGroupReader(redis, f"{redis_prefix}events", "webhooks", consumer, block_ms=100,
                                   claim_idle_s=claim_idle_s)  # fmt: skip
        # the receiver is on loopback, which FACTORY_WEBHOOK_ALLOW_PRIVATE must allow
        return Webhooks(PostgresWebhookStore(pool, box), policy, source=source, allow_private=True)

    return build


def event(event_type: str, run_id: str = "run-1", **data: Any) -> Event:
    return Event(type=event_type, run_id=run_id, data=data, at=datetime.now(UTC))


async def emit(redis: Redis, prefix: str, *events: Event) -> None:
    """Through the pipeline's own publisher (``RedisEventStream``), flushed."""
    stream = RedisEventStream(redis, prefix=prefix, linger_s=0.0)
    for one in events:
        await stream.emit(one)
    await stream.aclose()


@asynccontextmanager
async def serving(*services: Webhooks) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.serve(stop)) for s in services]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {timeout_s}s")


async def test_a_delivery_is_signed_and_the_receiver_verifies_it(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    service = make()
    added = await service.add(receiver.url("/hook"), ["escalation.opened", "run.failed"])
    async with serving(service):
        await emit(redis, redis_prefix, event("stage.started", stage=0),
                   event("escalation.opened", id="esc-1", priority="high", team="backend-engineering",
                         question="which datastore?"),
                   event("run.completed"))  # fmt: skip
        await until(lambda: receiver.at("/hook"))
        await asyncio.sleep(0.3)  # nothing else comes: stage.started and run.completed are not subscribed
    [got] = receiver.requests
    assert verify_signature(added.secret, got.headers["Factory-Signature"], got.body) == pytest.approx(
        time.time(), abs=5
    )
    body = got.json()
    assert body["type"] == got.headers["Factory-Event"] == "escalation.opened"
    assert body["id"] == got.headers["Factory-Delivery"] and body["run_id"] == "run-1"
    assert body["data"]["question"] == "which datastore?" and got.headers["Content-Type"] == "application/json"
    [row] = await service.deliveries()
    assert (row.id, row.status, row.attempts, row.last_status) == (body["id"], DeliveryStatus.DELIVERED, 1, 200)
    with pytest.raises(Exception, match="does not match"):
        verify_signature("whsec_wrong", got.headers["Factory-Signature"], got.body)


async def test_a_500_is_retried_then_delivered(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    receiver.plans["/flaky"] = [500, 503, 200]
    service = make()
    added = await service.add(receiver.url("/flaky"), ["run.failed"])
    async with serving(service):
        await emit(redis, redis_prefix, event("run.failed", error="boom"))
        await until(lambda: len(receiver.at("/flaky")) == 3)
        await until(lambda: _status_of(service, DeliveryStatus.DELIVERED))
    hits = receiver.at("/flaky")
    assert len({h.headers["Factory-Delivery"] for h in hits}) == 1  # one delivery, three attempts
    assert all(verify_signature(added.secret, h.headers["Factory-Signature"], h.body) for h in hits)
    assert hits[1].at - hits[0].at >= FAST.backoff_s * 0.5  # backed off between attempts
    [row] = await service.deliveries()
    assert (row.attempts, row.last_status, row.delivered_at is not None) == (3, 200, True)


async def _status_of(service: Webhooks, status: DeliveryStatus) -> bool:
    rows = await service.deliveries()
    return bool(rows) and all(r.status is status for r in rows)


async def test_a_receiver_that_always_fails_is_dead_lettered_and_replay_delivers(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    receiver.plans["/down"] = [500]
    service = make()
    hook = (await service.add(receiver.url("/down"), ["run.failed", "run.cancelled"])).webhook
    async with serving(service):
        await emit(redis, redis_prefix, event("run.failed", error="boom"), event("run.cancelled", reason="stop"))
        await until(lambda: _status_of(service, DeliveryStatus.DEAD))
        assert len(receiver.at("/down")) == 2 * FAST.attempts  # the limit, not one more
        dead = await service.dead()
        assert [(d.attempts, d.last_status) for d in dead] == [(3, 500), (3, 500)]
        assert all(d.last_error == "the receiver answered 500" for d in dead)

        receiver.plans["/down"] = [500] * 6 + [200]  # back up
        replayed = await service.replay(dead[0].id, by="ana")
        assert (replayed.status, replayed.attempts, replayed.replays) == (DeliveryStatus.PENDING, 0, 1)
        await until(lambda: len(receiver.at("/down")) == 7)
        assert await service.replay_all(webhook_id=hook.id) == 1
        await until(lambda: _status_of(service, DeliveryStatus.DELIVERED))
    assert await service.dead() == []
    assert sorted(d.replays for d in await service.deliveries()) == [1, 1]


async def test_slack_and_discord_receive_their_own_shapes(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    service = make()
    await service.add(receiver.url("/slack"), ["escalation.opened"], fmt="slack")
    await service.add(receiver.url("/discord"), ["escalation.opened"], fmt="discord")
    question = "which datastore? <!channel> @everyone " + "long " * 1000
    async with serving(service):
        await emit(redis, redis_prefix, event("escalation.opened", id="esc-9", priority="high",
                                              team="backend-engineering", question=question))  # fmt: skip
        await until(lambda: receiver.at("/slack") and receiver.at("/discord"))
    slack = receiver.at("/slack")[0].json()
    assert set(slack) == {"text", "blocks"} and slack["text"].startswith(
        ":rotating_light: high escalation esc-9 (backend-engineering): which datastore? &lt;!channel&gt;"
    )
    assert len(slack["text"]) <= 3000 and [b["type"] for b in slack["blocks"]] == ["section", "context"]
    discord = receiver.at("/discord")[0].json()
    assert len(discord["content"]) <= 2000 and discord["content"].endswith("…")
    assert discord["allowed_mentions"] == {"parse": []} and discord["embeds"][0]["title"] == "escalation.opened"


async def test_two_dispatchers_on_one_stream_make_each_delivery_once(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    first, second = make("c1"), make("c2")
    await first.add(receiver.url("/one"), ["run.failed"])
    await first.add(receiver.url("/two"), ["run.failed", "run.completed"])
    async with serving(first, second):
        await emit(redis, redis_prefix, *[event("run.failed", run_id=f"run-{n}") for n in range(40)])
        await emit(redis, redis_prefix, *[event("run.completed", run_id=f"run-{n}") for n in range(40)])
        await until(lambda: len(receiver.requests) >= 120)
        await asyncio.sleep(0.5)  # a duplicate would come meanwhile
    assert len(receiver.at("/one")) == 40 and len(receiver.at("/two")) == 80
    assert len({r.headers["Factory-Delivery"] for r in receiver.requests}) == 120
    pairs = {(r.path, r.json()["type"], r.json()["run_id"]) for r in receiver.requests}
    assert len(pairs) == 120
    info = await redis.xinfo_groups(f"{redis_prefix}events")
    assert [(g["name"], g["pending"]) for g in info] == [(b"webhooks", 0)]  # every event acknowledged


async def test_a_dead_receiver_does_not_slow_the_other_webhooks(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    receiver.delays["/hang"] = 3.0  # answers after the timeout: every attempt waits it out
    policy = DeliveryPolicy(attempts=2, backoff_s=0.05, backoff_cap_s=0.1, timeout_s=1.0, concurrency=4,
                            per_webhook=2, poll_s=0.05)  # fmt: skip
    service = make(policy=policy)
    await service.add(receiver.url("/hang"), ["run.failed"])
    await service.add(receiver.url("/fine"), ["run.failed"])
    async with serving(service):
        started = time.monotonic()
        await emit(redis, redis_prefix, *[event("run.failed", run_id=f"run-{n}") for n in range(10)])
        await until(lambda: len(receiver.at("/fine")) == 10)
        took = time.monotonic() - started
    assert took < policy.timeout_s, f"the healthy webhook waited {took:.2f}s behind the hanging one"
    assert 1 <= len(receiver.at("/hang")) <= policy.per_webhook * 2  # at most its share at a time


async def test_an_unacknowledged_event_is_taken_over_by_another_dispatcher(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    service = make("survivor", claim_idle_s=0.3)
    await service.add(receiver.url("/hook"), ["run.failed"])
    dying = StreamGroupReader(redis, f"{redis_prefix}events", "webhooks", "dying", block_ms=100)
    await dying.prepare()
    await emit(redis, redis_prefix, event("run.failed", run_id="run-orphan"))
    [(entry_id, taken)] = await dying.read()  # read, then the process dies before acknowledging
    assert taken.run_id == "run-orphan"
    async with serving(service):
        await until(lambda: receiver.at("/hook"))
    assert receiver.requests[0].json()["run_id"] == "run-orphan"
    [row] = await service.deliveries()
    assert row.event_id == entry_id
    survivor = StreamGroupReader(redis, f"{redis_prefix}events", "webhooks", "survivor")
    assert await survivor.prune(idle_s=0) == ["dying"]  # gone, holding nothing: tidied


async def test_a_runs_escalation_and_its_decision_reach_the_receiver(
    receiver: Receiver, pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=SecretStr(pg_url), redis_url=SecretStr(redis_base_url),
        redis_prefix=redis_prefix, scripted_model=None, memory_extraction="structured", webhook_backoff_s=0.05,
        webhook_poll_s=0.05, webhook_allow_private=True,  # the receiver is on loopback
    )  # fmt: skip
    blocked = {"status": "BLOCKED", "reasoning": "r", "blockers": ["which datastore?"], "confidence": 0.3}
    model = ScriptedModel({"teams": {"business-analysis": [blocked]}})
    async with open_factory(settings, model=model) as factory:
        service = webhooks(factory)
        added = await service.add(receiver.url("/ops"), ["escalation.opened", "escalation.decided", "run.completed"],
                                  fmt="json")  # fmt: skip
        async with serving(service):
            out = await factory.engine.start("Build a URL shortener.", "business-analysis,qa-engineering")
            assert out.run.status is RunStatus.WAITING_HUMAN
            await until(lambda: receiver.at("/ops"))
            [waiting] = out.escalations
            await factory.desk.answer(waiting.id, "PostgreSQL", by="ana")
            assert (await factory.engine.drive(out.run.id)).run.status is RunStatus.COMPLETE
            await until(lambda: len(receiver.at("/ops")) == 3)
    bodies = {b["type"]: b for b in (r.json() for r in receiver.at("/ops"))}  # the last two may pass each other
    assert sorted(bodies) == ["escalation.decided", "escalation.opened", "run.completed"]
    opened = bodies["escalation.opened"]["data"]
    assert (opened["id"], opened["team"], opened["priority"]) == (waiting.id, "business-analysis", "high")
    assert "which datastore?" in opened["question"] and bodies["escalation.decided"]["data"]["decided_by"] == "ana"
    assert all(b["run_id"] == out.run.id for b in bodies.values())
    for r in receiver.at("/ops"):
        verify_signature(added.secret, r.headers["Factory-Signature"], r.body)


async def test_an_event_postgresql_cannot_store_as_is_does_not_stall_the_dispatch(
    make: Callable[..., Webhooks], receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    service = make()
    await service.add(receiver.url("/hook"), ["run.failed"])
    async with serving(service):
        await emit(redis, redis_prefix, event("run.failed", run_id="run-nul", error="bad\x00byte"),
                   event("run.failed", run_id="run-next", error="fine"))  # fmt: skip
        await until(lambda: len(receiver.at("/hook")) == 2)
    errors = {body["run_id"]: body["data"]["error"] for body in (r.json() for r in receiver.at("/hook"))}
    assert errors == {"run-nul": "bad\ufffdbyte", "run-next": "fine"}  # sent side by side: in either order


async def test_claims_through_pgbouncer_never_take_a_delivery_twice(
    pgbouncer: PgBouncer, pg_url: str, box: SecretBox, receiver: Receiver, redis: Redis, redis_prefix: str
) -> None:
    """PgBouncer in transaction mode: no session state, no prepared statements; two senders claiming
    at once split the due deliveries, and two full services deliver each event once."""
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        await migrate(conn)
    url = pgbouncer.url(pg_url)
    async with (
        AsyncConnectionPool(url, min_size=2, max_size=4, kwargs=CONNECTION_KWARGS) as first,
        AsyncConnectionPool(url, min_size=2, max_size=4, kwargs=CONNECTION_KWARGS) as second,
    ):
        a, b = PostgresWebhookStore(first, box), PostgresWebhookStore(second, box)
        hook = (await Webhooks(a, allow_private=True).add(receiver.url("/hook"), ["run.failed"])).webhook
        rows = [Delivery(id=f"dlv-{n:024x}", webhook_id=hook.id, event_type="run.failed", event_id=f"{n}-0",
                         payload={"n": n}) for n in range(30)]  # fmt: skip
        assert await a.enqueue(rows) == 30 and await b.enqueue(rows) == 0
        claims = await asyncio.gather(*(s.claim(20, per_webhook=30, busy={}, lease_s=30) for s in (a, b, a, b)))
        taken = [c.delivery.id for claim in claims for c in claim]
        assert len(taken) == len(set(taken)) == 30
        for claim in claims:
            for c in claim:
                assert await a.finish(c.delivery.id, c.token, DeliveryStatus.DEAD, http_status=500, error="x")
        assert await b.replay_all() == 30

        def serve_on(store: PostgresWebhookStore, consumer: str) -> Webhooks:
            source = StreamGroupReader(redis, f"{redis_prefix}events", "webhooks", consumer, block_ms=100)
            return Webhooks(store, FAST, source=source, allow_private=True)

        one, two = serve_on(a, "c1"), serve_on(b, "c2")
        await one.store.remove(hook.id)
        await one.add(receiver.url("/live"), ["run.failed"])
        async with serving(one, two):
            await emit(redis, redis_prefix, *[event("run.failed", run_id=f"run-{n}") for n in range(20)])
            await until(lambda: len(receiver.at("/live")) == 20)
            await asyncio.sleep(0.3)
        assert len({r.json()["run_id"] for r in receiver.at("/live")}) == len(receiver.at("/live")) == 20


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest, box: SecretBox) -> WebhookStore:
    """The store contract runs over the in-memory twin and PostgreSQL alike."""
    if request.param == "memory":
        return InMemoryWebhookStore(box)
    return PostgresWebhookStore(request.getfixturevalue("pool"), box)


async def test_the_store_contract(store: WebhookStore) -> None:
    url = "https://hooks.slack.com/services/T1/B2/SECRETPART"
    hook = await store.add("wh-000000000001", url, ["run.failed"], WebhookFormat.SLACK, "whsec_s", by="ana")
    other = await store.add("wh-000000000002", "http://127.0.0.1:1/x", ["run.failed"], WebhookFormat.JSON, "whsec_t",
                            by=None)  # fmt: skip
    assert (hook.url, hook.active, hook.created_by) == ("https://hooks.slack.com/services/…", True, "ana")
    assert [h.id for h in await store.list()] == [hook.id, other.id] and await store.get("wh-000000000009") is None
    target = await store.target(hook.id)
    assert target is not None and (target.url, target.secret) == (url, "whsec_s")
    assert "SECRETPART" not in repr(target) and "whsec_s" not in repr(target)

    rows = [Delivery(id=f"dlv-{n:024x}", webhook_id=h.id, event_type="run.failed", event_id=f"{n}-0", run_id="r",
                     payload={"n": n}) for n in range(3) for h in (hook, other)]  # fmt: skip
    rows = [r.model_copy(update={"id": f"dlv-{i:024x}"}) for i, r in enumerate(rows)]
    assert await store.enqueue(rows) == 6 and await store.enqueue(rows[:2]) == 0
    await store.set_active(other.id, False)
    claimed = await store.claim(10, per_webhook=2, busy={hook.id: 1}, lease_s=30)
    assert [c.target.webhook_id for c in claimed] == [hook.id]  # its share, and none of the paused one
    [one] = claimed
    assert one.delivery.attempts == 1 and one.target.secret == "whsec_s"
    assert await store.claim(10, per_webhook=5, busy={}, lease_s=30) != []  # the others; not the one held
    assert not await store.finish(one.delivery.id, "stale", DeliveryStatus.DEAD, http_status=500, error="x")
    assert await store.finish(one.delivery.id, one.token, DeliveryStatus.DEAD, http_status=500, error="answered 500")
    [dead] = await store.deliveries(status=DeliveryStatus.DEAD)
    assert (dead.id, dead.last_status, dead.last_error) == (one.delivery.id, 500, "answered 500")
    assert await store.replay("dlv-" + "f" * 24) is None
    replayed = await store.replay(dead.id)
    assert replayed is not None and (replayed.status, replayed.attempts, replayed.replays) == ("pending", 0, 1)
    assert await store.replay(dead.id) is None and await store.replay_all() == 0  # pending, not dead
    assert len(await store.deliveries(webhook_id=other.id, last=2)) == 2
    assert await store.prune(older_than_days=0.0) == 0  # nothing delivered yet
    assert await store.remove(other.id) and not await store.remove(other.id)
    assert {d.webhook_id for d in await store.deliveries(last=100)} == {hook.id}  # its log went with it
