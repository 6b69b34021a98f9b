"""The decision queue on real PostgreSQL: the queue contract (twin and Postgres), concurrent
decisions, the SLA ladder with a controllable clock, and a run that resumes from a decision."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.errors import DecisionConflict, RunBusy
from factory.migrations import migrate
from factory.settings import Settings
from factory.wiring import open_factory
from hitl.base import Change, Escalation, EscalationKind, EscalationStatus, Priority, SlaLevel
from hitl.desk import DecisionDesk
from hitl.in_memory import InMemoryEscalationQueue
from hitl.postgres import PostgresEscalationQueue
from hitl.sla import SlaPolicy
from memory.audit_pg import PostgresAuditLog
from observability.events import LocalEventBus
from teams.base import RunStatus
from teams.store_pg import PostgresRunStore
from tests.unit.teams.test_decisions import LOW, PromptSpy

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def esc(
    i: str, *, kind: str = "approval", priority: str = "medium", stage: int = 0, created: datetime = T0
) -> Escalation:
    return Escalation(
        id=i, run_id="run-1", stage_index=stage, team="qa-engineering", kind=EscalationKind(kind),
        priority=Priority(priority), question=f"q{i}", sla_deadline=SlaPolicy().deadline(Priority(priority), created),
        created_at=created,
    )  # fmt: skip


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=4, kwargs={"autocommit": True}) as p:
        yield p


@pytest.fixture(params=["memory", "postgres"])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryEscalationQueue()
        return
    url = request.getfixturevalue("pg_url")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as p:
        yield PostgresEscalationQueue(p)


async def test_queue_changes_only_a_waiting_escalation_at_the_version_read(queue: Any) -> None:
    opened = await queue.open(esc("a"))
    assert (opened.version, opened.sla_started_at) == (0, T0)
    assert await queue.apply("a", 5, Change(status=EscalationStatus.APPROVED)) is None  # stale version
    raised = await queue.set_level("a", 0, 2)
    assert (raised.escalation_level, raised.version) == (2, 1)
    later = T0 + timedelta(hours=1)
    deferred = await queue.apply(
        "a", 1, Change(status=EscalationStatus.DEFERRED, sla_deadline=later + timedelta(hours=3),
                       sla_started_at=later, escalation_level=0, decided_by="ana"),
    )  # fmt: skip
    assert (deferred.status, deferred.escalation_level, deferred.sla_started_at) == ("deferred", 0, later)
    assert [e.id for e in await queue.list_open()] == ["a"]  # a deferred escalation still waits
    decided = await queue.apply(
        "a", 2, Change(status=EscalationStatus.ANSWERED, answer="yes", decided_by="bo", decided_at=later)
    )
    assert (decided.answer, decided.decided_by, decided.decided_at, decided.version) == ("yes", "bo", later, 3)
    assert await queue.set_level("a", 3, 3) is None  # decided: nothing changes it any more
    assert await queue.list_open() == []
    await queue.open(esc("b", stage=1, created=T0 + timedelta(seconds=1)))
    await queue.open(esc("c", stage=0, created=T0 + timedelta(seconds=2)))
    assert [e.id for e in await queue.for_stage("run-1", 0)] == ["a", "c"]
    assert [e.id for e in await queue.for_run("run-1")] == ["a", "b", "c"]


async def test_a_brief_list_leaves_the_context_out_and_nothing_else(queue: Any) -> None:
    full = esc("a").model_copy(update={"context": {"reasoning": "r" * 5000, "artifacts": {"x.md": "y" * 5000}}})
    await queue.open(full)
    await queue.open(esc("b", priority="high"))
    brief, whole = await queue.list_open(brief=True), await queue.list_open()
    assert [e.id for e in brief] == [e.id for e in whole] == ["b", "a"]
    assert [e.context for e in brief] == [{}, {}] and whole[1].context == full.context
    assert [e.model_dump(exclude={"context"}) for e in brief] == [e.model_dump(exclude={"context"}) for e in whole]
    assert [e.id for e in await queue.list_open("run-1", brief=True)] == ["b", "a"]


async def test_two_operators_in_two_processes_decide_once(pool: AsyncConnectionPool, pg_url: str) -> None:
    await PostgresEscalationQueue(pool).open(esc("a"))
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as other:
        desks = [DecisionDesk(PostgresEscalationQueue(p), PostgresAuditLog(p), LocalEventBus()) for p in (pool, other)]
        for _ in range(5):  # several rounds, so the race is really run
            await PostgresEscalationQueue(pool).open(esc(f"r{_}"))
        outcomes = []
        for i in range(5):
            outcomes.append(
                await asyncio.gather(
                    desks[0].approve(f"r{i}", by="ana"),
                    desks[1].reject(f"r{i}", reason="no", by="bo"),
                    return_exceptions=True,
                )
            )
    for pair in outcomes:
        assert sum(isinstance(r, Escalation) for r in pair) == 1, pair
        assert sum(isinstance(r, DecisionConflict) for r in pair) == 1, pair
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM audit_entries WHERE kind = 'escalation.decided'")
        assert await cur.fetchone() == (5,)  # one record per decision, none for the refused one


async def test_sla_ladder_on_postgres_with_a_controllable_clock(pool: AsyncConnectionPool) -> None:
    now = [T0]
    events: list[Any] = []
    bus = LocalEventBus()
    bus.subscribe(events.append)
    desk = DecisionDesk(
        PostgresEscalationQueue(pool), PostgresAuditLog(pool), bus, clock=lambda: now[0],
        policy=SlaPolicy(auto_approve_low=True),
    )  # fmt: skip
    await desk.queue.open(esc("crit", kind="blocked", priority="critical"))
    await desk.queue.open(esc("low", priority="low"))
    for minutes in (44, 45, 59, 60, 179, 180):
        now[0] = T0 + timedelta(minutes=minutes)
        await desk.tick()
    assert [(e.data["id"], e.data["level"]) for e in events] == [("crit", 1), ("crit", 2), ("crit", 3)]
    crit = await desk.queue.get("crit")
    assert (crit.escalation_level, crit.status) == (SlaLevel.FINAL, EscalationStatus.OPEN)  # waits on
    now[0] = T0 + timedelta(hours=74)
    await desk.tick()
    low = await desk.queue.get("low")
    assert low.status is EscalationStatus.APPROVED and low.decided_by == "sla-ladder"
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT kind, count(*) FROM audit_entries GROUP BY kind ORDER BY kind")
        assert dict(await cur.fetchall()) == {"escalation.decided": 1, "escalation.sla": 6}


@pytest.fixture
def settings(pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=pg_url, redis_url=redis_base_url, redis_prefix=redis_prefix,
        scripted_model=None, confidence_floor=0.6, memory_extraction="structured",
    )  # fmt: skip


async def test_answer_and_reject_resume_the_run_on_real_services(settings: Settings, redis: Any) -> None:
    blocked = {"status": "BLOCKED", "reasoning": "r", "blockers": ["which database?"], "confidence": 0.4}
    spy = PromptSpy({"teams": {"solution-architecture": [blocked], "qa-engineering": [LOW]}})
    async with open_factory(settings, model=spy) as f:
        out = await f.engine.start("Build a URL shortener with an HTTP API.", "phase1")
        assert out.run.status is RunStatus.WAITING_HUMAN
        [waiting] = await f.escalations.list_open()
        assert (waiting.kind, waiting.priority, waiting.team) == ("blocked", "high", "solution-architecture")
        assert waiting.context["blockers"] == ["which database?"] and "choices" in waiting.context
        assert (await f.engine.drive(out.run.id)).run.status is RunStatus.WAITING_HUMAN  # undecided: still waits

        await f.desk.answer(waiting.id, "PostgreSQL 16 with one table per aggregate", by="ana")
        out = await f.engine.drive(out.run.id)
        assert "PostgreSQL 16 with one table per aggregate" in spy.prompts["solution-architecture"][1]
        assert out.run.status is RunStatus.WAITING_HUMAN
        [approval] = out.escalations
        assert (approval.kind, approval.team) == ("approval", "qa-engineering")

        await f.desk.reject(approval.id, reason="add a load test for redirects", by="bo")
        out = await f.engine.drive(out.run.id)
        assert out.run.status is RunStatus.COMPLETE, out
        assert "add a load test for redirects" in spy.prompts["qa-engineering"][1]
        assert out.audit.intact
        entries = await f.audit.entries(out.run.id)
        decided = [json.loads(e.payload) for e in entries if e.kind == "escalation.decided"]
        assert [(d["decision"], d["decided_by"]) for d in decided] == [("answered", "ana"), ("rejected", "bo")]
        snapshot = json.loads(next(e.payload for e in entries if e.kind == "run.snapshot"))
        assert len(snapshot["escalations"]) == 4  # two opened, two decided


async def test_a_run_is_driven_by_one_process_at_a_time(settings: Settings, redis: Any) -> None:
    spy = PromptSpy({"teams": {"business-analysis": [LOW]}})
    async with open_factory(settings, model=spy) as first, open_factory(settings, model=spy) as second:
        out = await first.engine.start("Build a URL shortener with an HTTP API.", "phase1")
        async with first.store.lease(out.run.id):
            with pytest.raises(RunBusy, match="another process"):
                await second.engine.drive(out.run.id)
        assert (await second.engine.drive(out.run.id)).run.status is RunStatus.WAITING_HUMAN


async def test_batch_approve_on_postgres_refuses_a_high_priority_item(pool: AsyncConnectionPool) -> None:
    desk = DecisionDesk(PostgresEscalationQueue(pool), PostgresAuditLog(pool), LocalEventBus())
    await desk.queue.open(esc("low", priority="low"))
    await desk.queue.open(esc("high", priority="high"))
    outcome = await desk.batch_approve(["low", "high"], by="ana")
    assert [e.id for e in outcome.approved] == ["low"]
    assert outcome.refused == [("high", "high priority is not low-risk; decide it on its own")]
    assert [e.id for e in await desk.queue.list_open()] == ["high"]
    assert (await desk.batch_approve(None, by="ana")).approved == []  # all low-risk: none left


async def test_a_lease_ends_with_a_failed_or_cancelled_driver(pool: AsyncConnectionPool) -> None:
    store = PostgresRunStore(pool)
    with pytest.raises(RuntimeError):
        async with store.lease("run-x"):
            raise RuntimeError("the drive failed")
    held = asyncio.Event()

    async def driver() -> None:
        async with store.lease("run-x"):
            held.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(driver())
    await held.wait()
    with pytest.raises(RunBusy):
        async with store.lease("run-x"):
            pass
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for _ in range(3):  # at once, and none of the pool's connections holds a lock of the run any more
        async with store.lease("run-x"):
            pass
