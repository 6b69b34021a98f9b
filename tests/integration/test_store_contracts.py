"""One contract suite, two implementations: the in-memory twins and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.errors import LeaseLost, RunBusy
from factory.migrations import migrate
from hitl.base import Escalation, EscalationKind, Priority
from hitl.in_memory import InMemoryEscalationQueue
from hitl.postgres import PostgresEscalationQueue
from memory.audit_memory import InMemoryAuditLog
from memory.audit_pg import PostgresAuditLog
from teams.base import Run, RunStatus, StageRecord, StageStatus, StoredArtifact
from teams.results import TaskResult
from teams.store_memory import InMemoryRunStore
from teams.store_pg import PostgresRunStore

pytestmark = pytest.mark.integration


@dataclass
class Stores:
    runs: Any
    audit: Any
    escalations: Any
    lapse: Callable[[str], Awaitable[None]]  # the run's lease lapses, as if its holder stalled


@pytest.fixture(params=["memory", "postgres"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param == "memory":
        runs = InMemoryRunStore()

        async def take_over(run_id: str) -> None:
            runs.take_over(run_id)

        yield Stores(runs, InMemoryAuditLog(), InMemoryEscalationQueue(), take_over)
        return
    url = request.getfixturevalue("pg_url")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        assert await migrate(conn)
        assert await migrate(conn) == []  # idempotent
    async with AsyncConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:

        async def expire(run_id: str) -> None:
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE run_leases SET expires_at = now() - interval '1 s' WHERE run_id = %s", (run_id,)
                )

        yield Stores(PostgresRunStore(pool), PostgresAuditLog(pool), PostgresEscalationQueue(pool), expire)


def _run(run_id: str = "run-1") -> Run:
    now = datetime.now(UTC) + timedelta(seconds=int(run_id.rsplit("-", 1)[1]))
    return Run(
        id=run_id, requirement="r", pipeline=["qa-engineering"], pipeline_name="custom", created_at=now, updated_at=now
    )


async def test_stage_saves_are_idempotent(stores: Stores) -> None:
    async with stores.runs.lease("run-1") as lease:
        await stores.runs.create_run(_run(), lease=lease)
        await stores.runs.create_run(_run(), lease=lease)
        stage = StageRecord(run_id="run-1", index=0, team="qa-engineering")
        await stores.runs.save_stage(stage, lease=lease)
        stage.status, stage.attempts = StageStatus.COMPLETE, 2
        stage.result = TaskResult.model_validate(
            {"status": "COMPLETE", "reasoning": "x", "artifacts": [], "confidence": 0.7}
        )
        await stores.runs.save_stage(stage, lease=lease)
    [saved] = await stores.runs.stages("run-1")
    assert saved.status is StageStatus.COMPLETE and saved.attempts == 2 and saved.result == stage.result


async def test_a_driver_that_lost_its_lease_commits_nothing(stores: Stores) -> None:
    stage = StageRecord(run_id="run-1", index=0, team="qa-engineering")
    async with stores.runs.lease("run-1") as first:
        await stores.runs.create_run(_run(), [stage], lease=first)
        with pytest.raises(RunBusy):  # held: nobody else drives it
            async with stores.runs.lease("run-1"):
                pass
        await stores.lapse("run-1")
        await stores.runs.save_stage(stage, lease=first)  # lapsed, but nobody took it: still its driver's
        async with stores.runs.lease("run-1") as second:  # taken over by the next driver
            assert second.token > first.token
            with pytest.raises(LeaseLost, match="no longer holds run run-1"):
                await stores.runs.save_stage(stage.model_copy(update={"attempts": 9}), lease=first)
            with pytest.raises(LeaseLost):
                first.check()  # and it knows, before any other call
            with pytest.raises(LeaseLost):
                await stores.runs.renew(first)
            with pytest.raises(LeaseLost):
                await stores.runs.set_run_status("run-1", RunStatus.FAILED, lease=first)
            await stores.runs.save_stage(stage.model_copy(update={"attempts": 1}), lease=second)
            await stores.runs.renew(second)
    [saved] = await stores.runs.stages("run-1")
    assert saved.attempts == 1 and (await stores.runs.get_run("run-1")).status is RunStatus.RUNNING
    async with stores.runs.lease("run-1"):  # let go at once when its block ends
        pass


async def test_artifacts_are_keyed_by_name(stores: Stores) -> None:
    a = StoredArtifact(
        run_id="run-1", stage_index=0, team="qa-engineering", name="qa/t.py", kind="code", sha256="a", bytes=1
    )
    async with stores.runs.lease("run-1") as lease:
        await stores.runs.create_run(_run(), lease=lease)
        await stores.runs.save_artifacts([a], lease=lease)
        await stores.runs.save_artifacts([a.model_copy(update={"sha256": "b"})], lease=lease)
    [saved] = await stores.runs.artifacts("run-1")
    assert saved.sha256 == "b"


async def test_audit_chain_appends_idempotently_and_verifies(stores: Stores) -> None:
    first = await stores.audit.append("run-1", "k1", "created", {"a": 1})
    again = await stores.audit.append("run-1", "k1", "created", {"a": 2})
    assert again.sha256 == first.sha256 and again.payload == first.payload
    second = await stores.audit.append("run-1", "k2", "next", {"b": "ü"})
    assert second.prev_sha256 == first.sha256 and second.seq == 1
    report = await stores.audit.verify("run-1")
    assert report.intact and report.entries == 2 and report.head_sha256 == second.sha256
    assert (await stores.audit.verify("other")).entries == 0


async def test_escalations_list_by_priority_then_deadline(stores: Stores) -> None:
    now = datetime.now(UTC)

    def esc(i: str, priority: Priority, due_h: int) -> Escalation:
        return Escalation(
            id=i, run_id="run-1", stage_index=0, team="qa-engineering", kind=EscalationKind.BLOCKED,
            priority=priority, question=f"q{i}", sla_deadline=now + timedelta(hours=due_h), created_at=now,
        )  # fmt: skip

    for e in [
        esc("a", Priority.LOW, 1),
        esc("b", Priority.CRITICAL, 5),
        esc("c", Priority.CRITICAL, 2),
        esc("d", Priority.MEDIUM, 1),
    ]:
        await stores.escalations.open(e)
    again = await stores.escalations.open(esc("a", Priority.CRITICAL, 0))
    assert again.priority is Priority.LOW  # opening twice keeps the first
    assert [e.id for e in await stores.escalations.list_open()] == ["c", "b", "d", "a"]
    assert await stores.escalations.list_open("run-2") == []


async def test_audit_append_many_keeps_order_and_is_idempotent(stores: Stores) -> None:
    first = await stores.audit.append("run-1", "k1", "created", {"a": 1})
    batch = await stores.audit.append_many(
        "run-1", [("k1", "created", {"a": 9}), ("k2", "next", {"b": 2}), ("k3", "last", {"c": 3})]
    )
    assert batch[0] == first  # an existing key returns the stored entry
    assert [e.seq for e in batch] == [0, 1, 2] and batch[2].prev_sha256 == batch[1].sha256
    assert (await stores.audit.verify("run-1")).entries == 3


async def test_runs_by_status_leave_out_the_excluded_before_the_limit(stores: Stores) -> None:
    for n in range(4):
        async with stores.runs.lease(f"run-{n}") as lease:
            await stores.runs.create_run(_run(f"run-{n}"), lease=lease)
    assert [r.id for r in await stores.runs.runs_with_status([RunStatus.RUNNING], limit=2)] == ["run-0", "run-1"]
    found = await stores.runs.runs_with_status([RunStatus.RUNNING], limit=2, exclude=["run-0", "run-1"])
    assert [r.id for r in found] == ["run-2", "run-3"]
    assert await stores.runs.runs_with_status([RunStatus.COMPLETE]) == []
