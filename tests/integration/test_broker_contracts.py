"""The broker contract, run on the in-memory twin and on real Redis alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from broker.base import BrokerLimits, ClarificationBroker, ClarificationReply, ClarificationRequest, Refusal
from broker.in_memory import InMemoryBroker
from broker.redis_streams import RedisBroker
from teams.slugs import TeamSlug

LIMITS = BrokerLimits(reply_timeout_s=2.0, claim_idle_s=0.3, max_depth=2, max_per_objective=3)
A: TeamSlug = "business-analysis"
B: TeamSlug = "api-design"
C: TeamSlug = "database-engineering"
D: TeamSlug = "qa-engineering"


def ask(
    target: TeamSlug,
    chain: Sequence[TeamSlug] = (A,),
    *,
    ident: str = "r1",
    objective: str = "run:0",
    question: str = "why?",
) -> ClarificationRequest:
    return ClarificationRequest(
        id=ident,
        run_id="run",
        objective_id=objective,
        from_team=chain[-1],
        target_team=target,
        question=question,
        hop_chain=list(chain),
        created_at=datetime.now(UTC),
    )


def reply_to(request: ClarificationRequest, text: str, *, ok: bool = True) -> ClarificationReply:
    return ClarificationReply(
        request_id=request.id, team=request.target_team, ok=ok, answer=text, answered_at=datetime.now(UTC)
    )


AnswerFn = Callable[[ClarificationRequest], Awaitable[ClarificationReply]]


@dataclass
class Echo:
    """An answerer that records its calls; ``delay`` makes it slow, ``fail`` makes it raise."""

    delay: float = 0.0
    fail: bool = False
    calls: list[str] = field(default_factory=list)

    async def __call__(self, request: ClarificationRequest) -> ClarificationReply:
        self.calls.append(request.id)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return reply_to(request, f"{request.target_team} says: {request.question}")


@pytest.fixture(params=["memory", "redis"])
async def broker(
    request: pytest.FixtureRequest, redis_base_url: str, redis_prefix: str
) -> AsyncIterator[ClarificationBroker]:
    if request.param == "memory":
        yield InMemoryBroker(LIMITS)
        return
    redis = Redis.from_url(redis_base_url)
    try:
        yield RedisBroker(redis, prefix=redis_prefix, limits=LIMITS)
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@contextlib.asynccontextmanager
async def serving(
    broker: ClarificationBroker, answerers: dict[TeamSlug, AnswerFn]
) -> AsyncIterator[dict[TeamSlug, asyncio.Task[None]]]:
    stop = asyncio.Event()
    tasks = {
        team: asyncio.create_task(broker.serve(team, answerer, consumer=f"c-{team}", stop=stop))  # type: ignore[arg-type]
        for team, answerer in answerers.items()
    }
    try:
        yield tasks
    finally:
        stop.set()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_a_request_is_answered_by_the_target_team(broker: ClarificationBroker) -> None:
    echo = Echo()
    async with serving(broker, {B: echo}):
        outcome = await broker.request(ask(B, question="Which status on a miss?"))
    assert outcome.answered and outcome.reply is not None
    assert outcome.reply.team == B and "Which status on a miss?" in outcome.reply.answer
    assert outcome.reply.responder == f"c-{B}" and echo.calls == ["r1"]
    counters = await broker.counters()
    assert counters["requests"] == 1 and counters["replies"] == 1


async def test_self_routing_is_refused_without_sending(broker: ClarificationBroker) -> None:
    outcome = await broker.request(ask(A, (A,)))
    assert outcome.refusal is Refusal.SELF_ROUTING and not outcome.answered
    assert (await broker.counters()) == {"refused.self_routing": 1}


@pytest.mark.parametrize("chain", [(A, B), (A, C, B), (B, C, D)])
async def test_cycles_are_refused_at_any_depth(broker: ClarificationBroker, chain: tuple[TeamSlug, ...]) -> None:
    deep = BrokerLimits(**{**LIMITS.__dict__, "max_depth": 5})
    broker.limits = deep
    outcome = await broker.request(ask(chain[0], chain))
    assert outcome.refusal is Refusal.CYCLE and chain[0] in outcome.detail


async def test_hop_depth_is_limited(broker: ClarificationBroker) -> None:
    echo = Echo()
    async with serving(broker, {C: echo, D: echo}):
        second_hop = await broker.request(ask(C, (A, B)))
        third_hop = await broker.request(ask(D, (A, B, C), ident="r2"))
    assert second_hop.answered
    assert third_hop.refusal is Refusal.DEPTH and "3 hops" in third_hop.detail
    assert echo.calls == ["r1"]


async def test_a_responder_may_ask_once_more(broker: ClarificationBroker) -> None:
    async def b_asks_c(request: ClarificationRequest) -> ClarificationReply:
        nested = await broker.request(
            ask(
                C,
                [*request.hop_chain, B],
                ident=f"{request.id}/1",
                objective=f"clarify:{request.id}",
                question=request.question,
            )
        )
        assert nested.reply is not None
        return reply_to(request, f"B relays: {nested.reply.answer}")

    async with serving(broker, {B: b_asks_c, C: Echo()}):
        outcome = await broker.request(ask(B, question="Which index?"))
    assert outcome.answered and outcome.reply is not None
    assert outcome.reply.answer == f"B relays: {C} says: Which index?"


async def test_the_cap_per_objective_is_enforced(broker: ClarificationBroker) -> None:
    async with serving(broker, {B: Echo()}):
        outcomes = [await broker.request(ask(B, ident=f"r{i}")) for i in range(5)]
        other = await broker.request(ask(B, ident="x", objective="run:1"))
    assert [o.answered for o in outcomes] == [True, True, True, False, False]
    assert outcomes[3].refusal is Refusal.CAP and "3" in outcomes[3].detail
    assert other.answered
    assert (await broker.counters())["refused.cap"] == 2


async def test_no_responder_times_out(broker: ClarificationBroker) -> None:
    broker.limits = BrokerLimits(**{**LIMITS.__dict__, "reply_timeout_s": 0.3})
    started = asyncio.get_running_loop().time()
    outcome = await broker.request(ask(B))
    assert outcome.refusal is Refusal.TIMEOUT and B in outcome.detail
    assert asyncio.get_running_loop().time() - started < 2.0
    assert (await broker.counters())["timeouts"] == 1


async def test_a_failing_answerer_replies_with_the_failure(broker: ClarificationBroker) -> None:
    async with serving(broker, {B: Echo(fail=True)}):
        outcome = await broker.request(ask(B))
    assert not outcome.answered and outcome.reply is not None and not outcome.reply.ok
    assert "model exploded" in outcome.detail


async def _deliver_again(broker: ClarificationBroker, request: ClarificationRequest) -> None:
    if isinstance(broker, InMemoryBroker):
        broker.deliver(request)
    else:  # a second entry, as an asker's re-send after a lost connection adds it (reclaims: test_broker_streams)
        assert isinstance(broker, RedisBroker)
        await broker._redis.xadd(
            broker.stream(request.target_team),
            {"id": request.id, "request": request.model_dump_json(), "resent": "1"},
        )


async def test_duplicate_deliveries_are_answered_once(broker: ClarificationBroker) -> None:
    echo = Echo()
    request = ask(B)
    async with serving(broker, {B: echo}):
        first = await broker.request(request)
        await _deliver_again(broker, request)
        again = await broker.request(request)  # the same id asked again gets the same answer
        for _ in range(100):
            if (await broker.counters()).get("duplicates"):
                break
            await asyncio.sleep(0.02)
    assert first.reply == again.reply and echo.calls == ["r1"]
    assert (await broker.counters())["duplicates"] >= 1


async def test_the_same_request_asked_twice_at_once_is_sent_and_counted_once(broker: ClarificationBroker) -> None:
    echo = Echo(delay=0.2)
    request = ask(B)
    async with serving(broker, {B: echo}):
        first, second = await asyncio.wait_for(
            asyncio.gather(broker.request(request), broker.request(request)), timeout=LIMITS.reply_timeout_s + 1
        )
    assert first.answered and second.answered and first.reply == second.reply
    assert echo.calls == ["r1"]
    counters = await broker.counters()
    assert counters["requests"] == 1 and counters["replies"] == 1


async def test_a_killed_responders_request_is_reclaimed_and_answered_once(broker: ClarificationBroker) -> None:
    hung = Echo(delay=3600)
    live = Echo()
    stop = asyncio.Event()
    doomed = asyncio.create_task(broker.serve(B, hung, consumer="doomed", stop=stop))
    asking = asyncio.create_task(broker.request(ask(B)))
    for _ in range(200):
        if hung.calls:
            break
        await asyncio.sleep(0.01)
    doomed.cancel()  # killed mid-request: no reply, no acknowledgement
    with contextlib.suppress(asyncio.CancelledError):
        await doomed
    async with serving(broker, {B: live}):
        outcome = await asking
    stop.set()
    assert outcome.answered and outcome.reply is not None and outcome.reply.responder == f"c-{B}"
    assert hung.calls == ["r1"] and live.calls == ["r1"]
    assert (await broker.counters())["reclaims"] >= 1
