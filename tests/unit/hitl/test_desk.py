"""Operator decisions and the SLA ladder on the in-memory twin, with a controllable clock."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from factory.errors import DecisionConflict, DecisionRefused, EscalationNotFound
from hitl.attention import attention
from hitl.base import Escalation, EscalationKind, EscalationStatus, Priority, SlaLevel
from hitl.desk import SLA_ACTOR, DecisionDesk, LowRisk
from hitl.in_memory import InMemoryEscalationQueue
from hitl.sla import SlaPolicy
from memory.audit_memory import InMemoryAuditLog
from observability.base import Event

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.seen.append(event)


def escalation(n: int, kind: str = "approval", priority: str = "medium", created: datetime = T0) -> Escalation:
    policy = SlaPolicy()
    return Escalation(
        id=f"esc-{n}",
        run_id=f"run-{n % 2}",
        stage_index=n,
        team="qa-engineering",
        kind=EscalationKind(kind),
        priority=Priority(priority),
        question=f"question {n}?",
        sla_deadline=policy.deadline(Priority(priority), created),
        created_at=created,
    )


@pytest.fixture
def desk() -> Any:
    clock = Clock()
    queue = InMemoryEscalationQueue()
    audit = InMemoryAuditLog()
    events = Events()
    d = DecisionDesk(queue, audit, events, clock=clock, policy=SlaPolicy(auto_approve_low=True))
    d.clock, d.audit, d.events = clock, audit, events  # type: ignore[attr-defined]
    return d


async def test_each_decision_is_checked_recorded_and_announced(desk: Any) -> None:
    await desk.queue.open(escalation(1, "clarification", "high"))
    with pytest.raises(DecisionRefused, match="answer it"):
        await desk.approve("esc-1", by="ana")
    with pytest.raises(DecisionRefused, match="empty"):
        await desk.answer("esc-1", "   ", by="ana")
    with pytest.raises(EscalationNotFound):
        await desk.answer("esc-9", "x", by="ana")
    decided = await desk.answer("esc-1", " Use PostgreSQL 16. ", by="ana")
    assert (decided.status, decided.answer, decided.decided_by, decided.decided_at) == (
        EscalationStatus.ANSWERED, "Use PostgreSQL 16.", "ana", T0,
    )  # fmt: skip
    [entry] = await desk.audit.entries("run-1")
    assert entry.key == "escalation.esc-1.decided" and entry.kind == "escalation.decided"
    payload = json.loads(entry.payload)
    assert (payload["decided_by"], payload["decision"], payload["text"]) == ("ana", "answered", "Use PostgreSQL 16.")
    assert payload["at"] == T0.isoformat()
    assert [e.type for e in desk.events.seen] == ["escalation.decided"]
    with pytest.raises(DecisionConflict, match="already answered by ana"):
        await desk.reject("esc-1", reason="no", by="bo")


async def test_approval_takes_notes_reject_needs_a_reason(desk: Any) -> None:
    await desk.queue.open(escalation(1))
    await desk.queue.open(escalation(2))
    with pytest.raises(DecisionRefused, match="approve it or reject it"):
        await desk.answer("esc-1", "yes", by="ana")
    approved = await desk.approve("esc-1", by="ana", notes="looks right")
    assert approved.status is EscalationStatus.APPROVED and approved.answer == "looks right"
    with pytest.raises(DecisionRefused, match="reason is empty"):
        await desk.reject("esc-2", reason="", by="ana")
    rejected = await desk.reject("esc-2", reason="misses click counts", by="ana")
    assert rejected.status is EscalationStatus.REJECTED and rejected.answer == "misses click counts"


async def test_two_operators_deciding_at_once_one_wins(desk: Any) -> None:
    await desk.queue.open(escalation(1))
    results = await asyncio.gather(
        desk.approve("esc-1", by="ana"), desk.reject("esc-1", reason="no", by="bo"), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, Escalation)]
    losses = [r for r in results if isinstance(r, DecisionConflict)]
    assert len(wins) == 1 and len(losses) == 1
    assert wins[0].decided_by in str(losses[0])
    assert len(await desk.audit.entries("run-1")) == 1


async def test_a_decision_made_on_a_stale_view_is_refused(desk: Any) -> None:
    opened = await desk.queue.open(escalation(1))
    await desk.defer("esc-1", by="ana")
    with pytest.raises(DecisionConflict, match="changed since you looked"):
        await desk.approve("esc-1", by="bo", version=opened.version)


async def test_batch_approve_takes_only_low_risk_items(desk: Any) -> None:
    await desk.queue.open(escalation(1, "approval", "low"))
    await desk.queue.open(escalation(2, "approval", "high"))
    await desk.queue.open(escalation(3, "blocked", "low"))
    outcome = await desk.batch_approve(["esc-1", "esc-2", "esc-3", "esc-9"], by="ana")
    assert [e.id for e in outcome.approved] == ["esc-1"]
    refused = dict(outcome.refused)
    assert "high priority is not low-risk" in refused["esc-2"]
    assert "needs an answer, not an approval" in refused["esc-3"]
    assert refused["esc-9"] == "no such escalation"
    assert {e.id for e in await desk.queue.list_open()} == {"esc-2", "esc-3"}  # refused ones untouched
    wider = DecisionDesk(desk.queue, desk.audit, desk.events, low_risk=LowRisk(priorities=frozenset(Priority)))
    assert [e.id for e in (await wider.batch_approve(None, by="ana")).approved] == ["esc-2"]


async def test_defer_restarts_the_sla_window(desk: Any) -> None:
    await desk.queue.open(escalation(1, "approval", "high"))
    desk.clock.now = T0 + timedelta(hours=3, minutes=30)
    await desk.tick()
    assert (await desk.queue.get("esc-1")).escalation_level == SlaLevel.DUE_SOON
    with pytest.raises(DecisionRefused, match="not in the future"):
        await desk.defer("esc-1", by="ana", until=T0)
    deferred = await desk.defer("esc-1", by="ana")
    assert deferred.status is EscalationStatus.DEFERRED and deferred.escalation_level == 0
    assert deferred.sla_deadline == desk.clock.now + timedelta(hours=4)
    assert [e.id for e in await desk.queue.list_open()] == ["esc-1"]  # still waiting
    entries = await desk.audit.entries("run-1")
    assert [e.kind for e in entries] == ["escalation.sla", "escalation.deferred"]


async def test_the_sla_ladder_climbs_with_the_clock(desk: Any) -> None:
    await desk.queue.open(escalation(1, "approval", "medium"))  # 24 h to decide
    await desk.queue.open(escalation(2, "approval", "low"))  # 72 h, auto-approved at the final level
    steps: list[tuple[float, str, int]] = []

    async def at(hours: float) -> None:
        desk.clock.now = T0 + timedelta(hours=hours)
        await desk.tick()
        for e in desk.events.seen[len(steps) :]:
            steps.append((hours, e.data["id"], e.data.get("level", -1)))

    await at(17.9)  # 6.1 h of 24 left: on time
    assert steps == []
    await at(18.0)  # 25% left
    await at(23.99)
    await at(24.0)  # breached
    await at(25.99)
    await at(26.0)  # 2 h after the breach: final; no default action for a medium approval
    assert steps == [(18.0, "esc-1", 1), (24.0, "esc-1", 2), (26.0, "esc-1", 3)]
    assert (await desk.queue.get("esc-1")).status is EscalationStatus.OPEN
    await at(100.0)  # the low one skipped past every step at once: one event per step, then approved
    assert steps[3:] == [(100.0, "esc-2", 1), (100.0, "esc-2", 2), (100.0, "esc-2", 3), (100.0, "esc-2", -1)]
    low = await desk.queue.get("esc-2")
    assert (low.status, low.decided_by) == (EscalationStatus.APPROVED, SLA_ACTOR)
    await at(200.0)  # nothing more happens
    assert len(steps) == 7


async def test_without_auto_approval_the_final_level_keeps_waiting() -> None:
    clock = Clock()
    desk = DecisionDesk(InMemoryEscalationQueue(), InMemoryAuditLog(), Events(), clock=clock)
    await desk.queue.open(escalation(1, "approval", "low"))
    clock.now = T0 + timedelta(hours=80)
    await desk.tick()
    e = await desk.queue.get("esc-1")
    assert (e.status, e.escalation_level) == (EscalationStatus.OPEN, SlaLevel.FINAL)


async def test_attention_sums_up_what_waits() -> None:
    items = [
        escalation(1, "approval", "low"),
        escalation(2, "blocked", "critical", created=T0 - timedelta(hours=2)),  # breached
        escalation(3, "clarification", "high", created=T0 - timedelta(hours=3, minutes=30)),  # due soon
        escalation(4, "approval", "medium"),
    ]
    summary = attention(items, SlaPolicy(), T0)
    assert [w.escalation.id for w in summary.items] == ["esc-2", "esc-3", "esc-4", "esc-1"]
    assert summary.by_priority == {Priority.CRITICAL: 1, Priority.HIGH: 1, Priority.MEDIUM: 1, Priority.LOW: 1}
    assert (summary.breached, summary.due_soon, summary.total) == (1, 1, 4)
    assert summary.oldest[0].escalation.id == "esc-3"
    assert {r.run_id: r.escalations for r in summary.blocked_runs} == {"run-0": 2, "run-1": 2}
    assert summary.headline().startswith("4 waiting on you (1 critical, 1 high, 1 medium, 1 low); 1 past")
