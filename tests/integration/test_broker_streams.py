"""Redis-only broker properties: what the streams hold over time."""

from __future__ import annotations

import asyncio
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
