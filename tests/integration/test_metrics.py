"""Prometheus metrics on the real services: a scripted run through the real wiring, the shared state
read from PostgreSQL and Redis, ``/metrics`` scraped over real HTTP (a worker's ``serve_metrics`` and
the chat's route, outside its login) and parsed."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from broker.redis_streams import RedisBroker
from factory.metrics_snapshot import keep_fresh, metrics_of, snapshot
from factory.settings import Settings
from factory.wiring import Factory, open_factory
from factory.worker import announce_worker, retire_worker
from hitl.base import Escalation, EscalationKind, Priority
from observability.metrics import Metrics, serve_metrics
from routing.scripted import ScriptedModel
from teams.base import RunStatus
from teams.slugs import PIPELINES
from tests.e2e.conftest import add_user, start_chat, stop_chat
from tests.integration.cli import factory as factory_cli

pytestmark = pytest.mark.integration

REQ = "Build a URL shortener with an HTTP API: create short links and redirect to the target."
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def scrape(url: str) -> tuple[int, str, Samples]:
    with urllib.request.urlopen(url, timeout=15) as response:
        body = response.read().decode()
        return response.status, response.headers["Content-Type"], parse(body)


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def settings(pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=pg_url, redis_url=redis_base_url, redis_prefix=redis_prefix,
        scripted_model=None, memory_extraction="structured",
    )  # fmt: skip


@pytest.fixture
async def factory(settings: Settings, redis: Redis) -> AsyncIterator[Factory]:
    async with open_factory(settings, model=ScriptedModel({})) as opened:
        yield opened


async def _ledger(f: Factory) -> dict[tuple[str, str], tuple[int, int]]:
    async with f.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(team, 'none'), alias, sum(tokens_in), sum(tokens_out) FROM usage_ledger GROUP BY 1, 2"
        )
        return {(team, alias): (int(i), int(o)) for team, alias, i, o in await cur.fetchall()}


async def _late_escalation(f: Factory, run_id: str) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    await f.escalations.open(
        Escalation(
            id="late-1", run_id=run_id, stage_index=0, team="business-analysis", kind=EscalationKind.APPROVAL,
            priority=Priority.CRITICAL, question="ship it?", sla_deadline=long_ago + timedelta(hours=1),
            created_at=long_ago,
        )
    )  # fmt: skip


async def test_a_scripted_run_scraped_over_http(factory: Factory) -> None:
    f = factory
    metrics = metrics_of(f)
    assert isinstance(metrics, Metrics)
    out = await f.engine.start(REQ, "phase1")
    assert out.run.status is RunStatus.COMPLETE
    await _late_escalation(f, out.run.id)
    await announce_worker(f.redis, f.settings.redis_prefix, f"{f.settings.redis_prefix}worker:test-host:1", 60)
    await f.redis.xadd(f.broker.stream("qa-engineering"), {"request": "{}"})  # never read: one unanswered
    metrics.apply(await snapshot(f))
    metrics.set_worker_active_runs(1)

    server = await asyncio.to_thread(serve_metrics, metrics, "127.0.0.1", 0)
    try:
        status, content_type, got = await asyncio.to_thread(scrape, f"http://127.0.0.1:{server.port}/metrics")
    finally:
        await asyncio.to_thread(server.close)
    assert status == 200 and content_type.startswith("text/plain")

    assert labelled(got, "factory_runs_finished_total")[frozenset({("status", "complete")})] == 1
    assert labelled(got, "factory_runs_finished_total")[frozenset({("status", "failed")})] == 0
    assert got[("factory_runs", frozenset({("status", "complete")}))] == 1
    assert got[("factory_runs", frozenset({("status", "running")}))] == 0
    counts = labelled(got, "factory_stage_duration_seconds_count")
    assert counts == {frozenset({("team", team)}): 1 for team in PIPELINES["phase1"]}  # one per stage
    assert all(got[("factory_stage_duration_seconds_sum", labels)] > 0 for labels in counts)

    ledger = await _ledger(f)
    assert ledger, "the run made no recorded model call"
    tokens = labelled(got, "factory_model_tokens_total")
    for (team, alias), (tokens_in, tokens_out) in ledger.items():
        assert tokens[frozenset({("team", team), ("alias", alias), ("direction", "in")})] == tokens_in
        assert tokens[frozenset({("team", team), ("alias", alias), ("direction", "out")})] == tokens_out
    assert sum(tokens.values()) == sum(i + o for i, o in ledger.values())  # nothing counted the ledger lacks
    calls = labelled(got, "factory_model_calls_total")
    assert sum(calls.values()) == await _count(f, "SELECT count(*) FROM usage_ledger")

    assert got[("factory_escalations_open", frozenset({("priority", "critical")}))] == 1
    assert got[("factory_escalations_past_sla", frozenset({("priority", "critical")}))] == 1
    assert got[("factory_escalations_past_sla", frozenset({("priority", "high")}))] == 0
    assert got[("factory_workers_alive", frozenset())] == 1
    assert got[("factory_worker_active_runs", frozenset())] == 1
    assert got[("factory_broker_backlog", frozenset({("team", "qa-engineering")}))] == 1
    assert got[("factory_broker_backlog", frozenset({("team", "business-analysis")}))] == 0
    assert not any(out.run.id in value for _, labels in got for _, value in labels)  # never a run id


async def _count(f: Factory, sql: str) -> int:
    async with f.pool.connection() as conn:
        row = await (await conn.execute(sql)).fetchone()
        assert row is not None
        return int(row[0])


async def test_the_snapshot_reports_what_it_could_when_a_service_fails(factory: Factory) -> None:
    f = factory
    unreachable = AsyncConnectionPool("postgresql://nobody@127.0.0.1:1/none", open=False)  # never opened
    no_postgres = await snapshot(dataclasses.replace(f, pool=unreachable), timeout_s=2)
    assert (no_postgres.runs_by_status, no_postgres.open_escalations_by_priority) == (None, None)
    assert no_postgres.escalations_past_sla is None
    assert no_postgres.workers_alive == 0 and no_postgres.broker_backlog is not None

    gone = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1, socket_timeout=1)
    try:
        broker = RedisBroker(gone, prefix=f.settings.redis_prefix)
        no_redis = await snapshot(dataclasses.replace(f, redis=gone, broker=broker), timeout_s=2)
    finally:
        await gone.aclose()
    assert (no_redis.workers_alive, no_redis.broker_backlog) == (None, None)
    assert no_redis.runs_by_status is not None and no_redis.runs_by_status["complete"] == 0

    metrics = metrics_of(f)
    assert metrics is not None
    metrics.apply(no_redis)
    got = parse(metrics.exposition()[0].decode())
    assert math.isnan(got[("factory_workers_alive", frozenset())])  # unknown, not "no worker"
    assert labelled(got, "factory_broker_backlog") == {}


async def test_keep_fresh_applies_snapshots_until_stopped(factory: Factory) -> None:
    metrics = metrics_of(factory)
    assert metrics is not None
    await announce_worker(
        factory.redis, factory.settings.redis_prefix, f"{factory.settings.redis_prefix}worker:test-host:2", 60
    )
    stop = asyncio.Event()
    task = asyncio.create_task(keep_fresh(factory, metrics, stop, every_s=0.05))
    try:
        for _ in range(100):
            got = parse(metrics.exposition()[0].decode())
            if got[("factory_workers_alive", frozenset())] == 1:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("keep_fresh never applied a snapshot")
        await retire_worker(
            factory.redis, factory.settings.redis_prefix, f"{factory.settings.redis_prefix}worker:test-host:2"
        )
        for _ in range(100):
            if parse(metrics.exposition()[0].decode())[("factory_workers_alive", frozenset())] == 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("keep_fresh applied one snapshot, not the next")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def test_the_chat_serves_metrics_outside_its_login(env: dict[str, str], tmp_path: Path) -> None:
    chat_env = {**env, "FACTORY_WORKER_POLL_S": "0.5"}
    ran = factory_cli("run", REQ, "--json", "--non-interactive", env=chat_env)
    assert ran.returncode == 0, ran.stderr
    add_user(chat_env, "ana", "operator")  # with an account, the chat requires its login
    chat = start_chat(chat_env, tmp_path, tmp_path / "shots")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{chat.url}/user", timeout=15)
        assert refused.value.code == 401  # the chat's own API wants the login ...
        got: Samples = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # ... /metrics does not; the worker factory up started shows up
            status, content_type, got = scrape(f"{chat.url}/metrics")
            assert status == 200 and content_type.startswith("text/plain"), content_type
            if got.get(("factory_workers_alive", frozenset())) == 1:
                break
            time.sleep(0.3)
        assert got[("factory_workers_alive", frozenset())] == 1, labelled(got, "factory_workers_alive")
        assert got[("factory_runs", frozenset({("status", "complete")}))] == 1  # the CLI's run, from PostgreSQL
        assert ("factory_runs_finished_total", frozenset({("status", "complete")})) in got
        assert any(name == "process_cpu_seconds_total" for name, _ in got)
    finally:
        stop_chat(chat.proc)
