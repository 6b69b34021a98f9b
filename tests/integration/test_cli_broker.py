"""`factory broker stats` against real Redis: the counters and each team's backlog, or a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from broker.base import BrokerLimits, ClarificationReply, ClarificationRequest, Refusal
from broker.redis_streams import RedisBroker
from teams.slugs import ALL_TEAMS, TeamSlug
from tests.integration.cli import factory

pytestmark = pytest.mark.integration
ASKER: TeamSlug = "business-analysis"
ANSWERS: TeamSlug = "api-design"  # a live responder
SILENT: TeamSlug = "database-engineering"  # no responder at all
STUCK: TeamSlug = "qa-engineering"  # a responder that died mid-request


@pytest.fixture
def env(cli_env: dict[str, str], redis_base_url: str, redis_prefix: str) -> dict[str, str]:
    return {**cli_env, "FACTORY_REDIS_URL": redis_base_url, "FACTORY_REDIS_PREFIX": redis_prefix}


def ask(target: TeamSlug, ident: str, *, objective: str = "run:0", asker: TeamSlug = ASKER) -> ClarificationRequest:
    return ClarificationRequest(
        id=ident,
        run_id="run",
        objective_id=objective,
        from_team=asker,
        target_team=target,
        question="why?",
        hop_chain=[asker],
        created_at=datetime.now(UTC),
    )


async def answer(request: ClarificationRequest) -> ClarificationReply:
    if request.target_team == STUCK:
        await asyncio.sleep(3600)
    return ClarificationReply(
        request_id=request.id, team=request.target_team, ok=True, answer="yes", answered_at=datetime.now(UTC)
    )


async def _traffic(redis: Redis, prefix: str) -> None:
    """Two answered, one self-routed, one over the cap, one timed out, one left with a dead responder."""
    broker = RedisBroker(redis, prefix=prefix, limits=BrokerLimits(max_per_objective=2, reply_timeout_s=0.3))
    stop = asyncio.Event()
    live = asyncio.create_task(broker.serve(ANSWERS, answer, consumer="live", stop=stop))
    doomed = asyncio.create_task(broker.serve(STUCK, answer, consumer="doomed", stop=stop))
    try:
        outcomes = [await broker.request(ask(ANSWERS, f"a{i}")) for i in range(3)]
        assert [o.status for o in outcomes] == ["answered", "answered", Refusal.CAP.value]
        assert (await broker.request(ask(ASKER, "self"))).refusal is Refusal.SELF_ROUTING
        assert (await broker.request(ask(SILENT, "s", objective="run:1"))).refusal is Refusal.TIMEOUT
        assert (await broker.request(ask(STUCK, "k", objective="run:2"))).refusal is Refusal.TIMEOUT
    finally:
        stop.set()
        doomed.cancel()  # killed mid-request: its entry stays pending
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        await live


async def test_broker_stats_shows_counters_and_backlog(env: dict[str, str], redis: Redis, redis_prefix: str) -> None:
    await _traffic(redis, redis_prefix)
    proc = await asyncio.to_thread(factory, "broker", "stats", "--json", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["prefix"] == redis_prefix and stats["redis"] == env["FACTORY_REDIS_URL"]
    counters = stats["counters"]
    assert (counters["requests"], counters["replies"], counters["timeouts"]) == (4, 2, 2)
    assert counters["duplicates"] == counters["resent"] == counters["malformed"] == 0
    assert stats["refusals"] == {
        "self_routing": 1, "cycle": 0, "depth": 0, "cap": 1, "timeout": 2, "unavailable": 0
    }  # fmt: skip
    teams = stats["teams"]
    assert list(teams) == list(ALL_TEAMS)
    assert teams[ANSWERS] == {"stream": 0, "pending": 0, "waiting": 0}  # answered entries are deleted
    assert teams[SILENT] == {"stream": 1, "pending": 0, "waiting": 1}
    assert teams[STUCK] == {"stream": 1, "pending": 1, "waiting": 0}

    human = await asyncio.to_thread(factory, "broker", "stats", env=env, timeout=120)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert "requests 4  replies 2  timeouts 2" in lines[1] and "cap 1" in lines[2]
    assert [line.split() for line in lines if line.startswith(STUCK)] == [[STUCK, "1", "1", "0"]]


def test_broker_stats_says_when_redis_is_unreachable(env: dict[str, str]) -> None:
    proc = factory(
        "broker", "stats", env={**env, "FACTORY_REDIS_URL": "redis://127.0.0.1:1/0", "FACTORY_CONNECT_TIMEOUT_S": "1"}
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Redis at redis://127.0.0.1:1/0 is unreachable" in proc.stderr and "FACTORY_REDIS_URL" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


async def test_doctor_summarises_the_broker(env: dict[str, str], pg_url: str, redis: Redis, redis_prefix: str) -> None:
    await _traffic(redis, redis_prefix)
    script = Path(env["FACTORY_DATA_DIR"]).parent / "script.json"
    script.write_text("{}")
    doctor_env = {**env, "FACTORY_DATABASE_URL": pg_url, "FACTORY_SCRIPTED_MODEL": str(script)}
    proc = await asyncio.to_thread(factory, "doctor", "--json", env=doctor_env, timeout=300)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["broker"]["ok"], proc.stderr
    assert checks["broker"]["detail"] == (
        "4 requests, 2 replies, 2 refused, 2 timed out; now 1 being answered, 1 waiting for a responder"
    )
