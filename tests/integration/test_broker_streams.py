"""Redis-only broker properties: what the streams hold over time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from broker.base import BrokerLimits, ClarificationReply, ClarificationRequest, Refusal
from broker.redis_streams import GROUP, RedisBroker
from teams.slugs import TeamSlug

pytestmark = pytest.mark.integration
TEAM: TeamSlug = "api-design"


def ask(i: int) -> ClarificationRequest:
    return ClarificationRequest(
        id=f"q{i}",
        run_id="run",
        objective_id="run:0",
        from_team="business-analysis",
        target_team=TEAM,
        question=f"question {i}?",
        hop_chain=["business-analysis"],
        created_at=datetime.now(UTC),
    )


async def instant(request: ClarificationRequest) -> ClarificationReply:
    return ClarificationReply(
        request_id=request.id, team=request.target_team, ok=True, answer="yes", answered_at=datetime.now(UTC)
    )


async def test_answered_entries_leave_the_stream(redis: Redis, redis_prefix: str) -> None:
    limits = BrokerLimits(stream_maxlen=50, max_per_objective=10**6, reply_timeout_s=10)
    broker = RedisBroker(redis, prefix=redis_prefix, limits=limits)
    sent, lengths = 1200, []
    stop = asyncio.Event()
    serving = asyncio.create_task(broker.serve(TEAM, instant, consumer="c1", stop=stop))
    try:
        for start in range(0, sent, 25):  # a backlog below the limit
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(broker.request(ask(i)) for i in range(start, start + 25))), timeout=30
            )
            assert all(o.answered for o in outcomes)
            lengths.append(int(await redis.xlen(broker.stream(TEAM))))
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=10)
    assert lengths == [0] * len(lengths)  # answered and acknowledged entries are deleted at once
    assert (await redis.xpending(broker.stream(TEAM), GROUP))["pending"] == 0
    counters = await broker.counters()
    assert counters["requests"] == counters["replies"] == sent


async def test_a_backlog_is_trimmed_to_about_stream_maxlen(redis: Redis, redis_prefix: str) -> None:
    limits = BrokerLimits(stream_maxlen=50, max_per_objective=10**6, reply_timeout_s=0.2)
    broker = RedisBroker(redis, prefix=redis_prefix, limits=limits)
    # Trimming is approximate (MAXLEN ~): Redis drops whole stream nodes, so up to one node more.
    node = int((await redis.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    sent, lengths = 1200, []
    for start in range(0, sent, 200):  # nobody answers this team: every request waits in the stream
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(broker.request(ask(i)) for i in range(start, start + 200))), timeout=30
        )
        assert all(o.refusal is Refusal.TIMEOUT for o in outcomes)
        lengths.append(int(await redis.xlen(broker.stream(TEAM))))
    assert max(lengths) <= limits.stream_maxlen + node < sent / 4, lengths
    assert lengths[-1] >= limits.stream_maxlen  # trimmed to the limit, not emptied
    assert (await broker.counters())["requests"] == sent


async def _eventually(condition: Callable[[], Awaitable[object]], timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def _counted(broker: RedisBroker, name: str) -> int:
    return (await broker.counters()).get(name, 0)


@dataclass
class Slow:
    """Answers after ``delay_s``, recording each call."""

    delay_s: float = 0.0
    calls: list[str] = field(default_factory=list)

    async def __call__(self, request: ClarificationRequest) -> ClarificationReply:
        self.calls.append(request.id)
        await asyncio.sleep(self.delay_s)
        return await instant(request)


async def test_a_slow_answer_is_kept_claimed_and_not_answered_twice(redis: Redis, redis_prefix: str) -> None:
    limits = BrokerLimits(claim_idle_s=0.3, reply_timeout_s=10)
    broker = RedisBroker(redis, prefix=redis_prefix, limits=limits)
    slow = Slow(delay_s=4 * limits.claim_idle_s)  # the heartbeat must start, and beat more than once
    stop = asyncio.Event()
    responders = [asyncio.create_task(broker.serve(TEAM, slow, consumer=f"c{i}", stop=stop)) for i in range(2)]
    try:
        outcome = await asyncio.wait_for(broker.request(ask(1)), timeout=15)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*responders), timeout=10)
    assert outcome.answered and slow.calls == ["q1"]
    counters = await broker.counters()
    assert "reclaims" not in counters and "duplicates" not in counters


async def test_a_reclaimed_entry_answered_meanwhile_is_acknowledged_not_answered(
    redis: Redis, redis_prefix: str
) -> None:
    limits = BrokerLimits(claim_idle_s=0.3, reply_timeout_s=10)
    broker = RedisBroker(redis, prefix=redis_prefix, limits=limits)
    stream = broker.stream(TEAM)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    asking = asyncio.create_task(asyncio.wait_for(broker.request(ask(1)), timeout=15))
    await _eventually(lambda: redis.xlen(stream))
    # A responder takes the entry and dies; the asker re-sends (as after a lost connection).
    [[_, [(entry_id, fields)]]] = await redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=1)
    await redis.xadd(stream, {**fields, b"resent": b"1"})
    slow = Slow()
    stop = asyncio.Event()
    live = asyncio.create_task(broker.serve(TEAM, slow, consumer="live", stop=stop))
    try:
        outcome = await asking
        await _eventually(lambda: _counted(broker, "duplicates"))  # the dead one's entry, reclaimed
    finally:
        stop.set()
        await asyncio.wait_for(live, timeout=10)
    assert outcome.answered and slow.calls == ["q1"]
    counters = await broker.counters()
    assert counters["reclaims"] == 1 and counters["duplicates"] == 1 and counters["replies"] == 1
    assert (await redis.xpending(stream, GROUP))["pending"] == 0 and await redis.xlen(stream) == 0
    assert entry_id not in [e for e, _ in await redis.xrange(stream)]
