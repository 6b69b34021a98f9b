"""The store operations a cancel is made of, on the in-memory twins and on PostgreSQL: seizing a run's
lease from a live driver, a status and stages written together, the run's waiting escalations closed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.errors import LeaseLost, RunBusy
from factory.migrations import migrate
from hitl.base import Change, Escalation, EscalationKind, EscalationStatus, Priority
from hitl.desk import decision_audit
from hitl.in_memory import InMemoryEscalationQueue
from hitl.postgres import PostgresEscalationQueue
from memory.audit_memory import InMemoryAuditLog
from memory.audit_pg import PostgresAuditLog
from memory.chain import canonical
from teams.base import RunStatus, StageRecord, StageStatus
from tests.integration import test_store_contracts as contracts
from tests.integration.test_store_contracts import Stores, _run

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
stores = contracts.stores  # the run stores' fixture: the in-memory twin, then PostgreSQL


async def test_a_seized_lease_stops_a_live_driver(stores: Stores) -> None:
    stage = StageRecord(run_id="run-1", index=0, team="qa-engineering", status=StageStatus.RUNNING)
    async with stores.runs.lease("run-1") as driver:
        await stores.runs.create_run(_run(), [stage], lease=driver)
        seized = await stores.runs.seize("run-1")  # the driver is alive and its lease unexpired
        assert seized.token > driver.token
        async with stores.runs.holding(seized):
            with pytest.raises(LeaseLost, match="or an operator cancelled the run"):
                await stores.runs.save_stage(stage.model_copy(update={"attempts": 7}), lease=driver)
            with pytest.raises(LeaseLost):
                await stores.runs.set_run_status("run-1", RunStatus.COMPLETE, lease=driver)
            with pytest.raises(LeaseLost):
                await stores.runs.renew(driver)
            with pytest.raises(RunBusy):  # nobody takes it from the seizer but another seize
                async with stores.runs.lease("run-1"):
                    pass
            failed = stage.model_copy(update={"status": StageStatus.FAILED, "finished_at": T0})
            await stores.runs.set_run_status("run-1", RunStatus.CANCELLED, lease=seized, stages=[failed])
            again = await stores.runs.seize("run-1")  # a second cancel takes it from the first
            with pytest.raises(LeaseLost):  # the stages and the status go together, or neither
                await stores.runs.set_run_status(
                    "run-1", RunStatus.RUNNING, lease=seized, stages=[stage.model_copy(update={"attempts": 9})]
                )
            async with stores.runs.holding(again):
                pass
    [saved] = await stores.runs.stages("run-1")
    assert (saved.status, saved.attempts, saved.finished_at) == (StageStatus.FAILED, 0, T0)
    assert (await stores.runs.get_run("run-1")).status is RunStatus.CANCELLED
    async with stores.runs.lease("run-1"):  # the seizer let go when its block ended
        pass


async def test_seizing_a_run_nobody_holds(stores: Stores) -> None:
    async with stores.runs.lease("run-1") as first:
        await stores.runs.create_run(_run(), lease=first)
    seized = await stores.runs.seize("run-1")
    assert seized.token == first.token + 1
    async with stores.runs.holding(seized):
        await stores.runs.set_run_status("run-1", RunStatus.CANCELLED, lease=seized)
    assert (await stores.runs.get_run("run-1")).status is RunStatus.CANCELLED


def _esc(i: str, run_id: str = "run-1", *, created: datetime = T0) -> Escalation:
    return Escalation(
        id=i, run_id=run_id, stage_index=0, team="qa-engineering", kind=EscalationKind.BLOCKED,
        priority=Priority.HIGH, question=f"q{i}", sla_deadline=created + timedelta(hours=4), created_at=created,
    )  # fmt: skip


@pytest.fixture(params=["memory", "postgres"])
async def audited(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    """A queue that records each change in the audit with it, atomically, and that audit."""
    if request.param == "memory":
        audit = InMemoryAuditLog()
        yield InMemoryEscalationQueue(audit), audit
        return
    url = request.getfixturevalue("pg_url")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        yield PostgresEscalationQueue(pool, canonical=canonical), PostgresAuditLog(pool)


async def test_closing_a_runs_escalations(audited: tuple[Any, Any]) -> None:
    queue, audit = audited
    await queue.open(_esc("b", created=T0 + timedelta(seconds=1)))
    await queue.open(_esc("a"))
    await queue.open(_esc("decided", created=T0 + timedelta(seconds=2)))
    await queue.apply("decided", 0, Change(status=EscalationStatus.ANSWERED, answer="yes", decided_by="bo"))
    await queue.open(_esc("deferred", created=T0 + timedelta(seconds=3)))
    await queue.apply("deferred", 0, Change(status=EscalationStatus.DEFERRED, decided_by="bo"))
    await queue.open(_esc("other", "run-2"))

    closed = await queue.close_for_run("run-1", by="ana", reason="wrong requirement", audit=decision_audit)
    assert [e.id for e in closed] == ["a", "b", "deferred"]  # oldest first; the decided one is left as it was
    for e in closed:
        assert (e.status, e.answer, e.decided_by) == (EscalationStatus.EXPIRED, "wrong requirement", "ana")
        assert e.decided_at is not None and e.version == (2 if e.id == "deferred" else 1)
    assert await queue.list_open("run-1") == [] and [e.id for e in await queue.list_open()] == ["other"]
    assert (await queue.get("decided")).answer == "yes"
    # a decision made on the version read before the close is refused
    assert await queue.apply("a", 0, Change(status=EscalationStatus.ANSWERED, answer="late")) is None
    recorded = [json.loads(e.payload) for e in await audit.entries("run-1")]
    assert [(r["id"], r["decision"], r["decided_by"], r["text"]) for r in recorded] == [
        (i, "expired", "ana", "wrong requirement") for i in ("a", "b", "deferred")
    ]
    assert await queue.close_for_run("run-1", by="ana", reason=None) == []  # nothing waits any more
