"""A real `factory responders` process killed mid-request: another one reclaims it and answers once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from broker.base import BrokerLimits, ClarificationRequest
from broker.redis_streams import GROUP, RedisBroker
from teams.slugs import TeamSlug
from tests.integration.cli import FACTORY

pytestmark = pytest.mark.integration
TEAM: TeamSlug = "backend-engineering"


def _responder(env: dict[str, str], tmp: Path, name: str, latency_s: float) -> subprocess.Popen[bytes]:
    script = tmp / f"{name}.json"
    script.write_text(json.dumps({"latency_s": latency_s}))
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen(
        [FACTORY, "responders", "--team", TEAM],
        env={**env, "FACTORY_SCRIPTED_MODEL": str(script)},
        stdout=log,
        stderr=log,
    )


async def _pending_consumer(redis: Redis, stream: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pending = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
        except Exception:  # noqa: BLE001 - the group does not exist until the responder starts
            pending = []
        if pending:
            return str(pending[0]["consumer"].decode())
        await asyncio.sleep(0.05)
    raise AssertionError("the request was never delivered to the responder")


async def test_killed_responder_request_is_reclaimed_and_answered_once(
    cli_env: dict[str, str], pg_url: str, redis_base_url: str, redis_prefix: str, redis: Redis, tmp_path: Path
) -> None:
    env = {
        **cli_env,
        "FACTORY_DATABASE_URL": pg_url,
        "FACTORY_REDIS_URL": redis_base_url,
        "FACTORY_REDIS_PREFIX": redis_prefix,
        "FACTORY_CLARIFY_CLAIM_IDLE_S": "1",
    }
    broker = RedisBroker(redis, prefix=redis_prefix, limits=BrokerLimits(reply_timeout_s=90, claim_idle_s=1))
    request = ClarificationRequest(
        id="run-x:3:1:q1",
        run_id="run-x",
        objective_id="run-x:3",
        from_team="qa-engineering",
        target_team=TEAM,
        question="Is /health public?",
        hop_chain=["qa-engineering"],
        created_at=datetime.now(UTC),
    )
    doomed = _responder(env, tmp_path, "doomed", latency_s=600)  # would answer in ten minutes
    survivor = None
    try:
        asking = asyncio.create_task(broker.request(request))
        holder = await _pending_consumer(redis, broker.stream(TEAM))
        assert holder.endswith(f"-{doomed.pid}")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)
        survivor = _responder(env, tmp_path, "survivor", latency_s=0)
        outcome = await asyncio.wait_for(asking, timeout=90)
    finally:
        for proc in (doomed, survivor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    assert outcome.answered and outcome.reply is not None
    assert outcome.reply.responder.endswith(f"-{survivor.pid}") and outcome.reply.team == TEAM
    counters = await broker.counters()
    assert counters["replies"] == 1 and counters["reclaims"] >= 1 and "duplicates" not in counters
    assert await redis.xpending(broker.stream(TEAM), GROUP) == {  # nothing left unacknowledged
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    assert survivor.returncode == 0 and b"responders stopped" in (tmp_path / "survivor.log").read_bytes()
