"""Every decision has an author, and a decision whose audit entry cannot be written is not made
(the in-memory twins; the Postgres path runs in tests/integration/test_hardening_audit.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from factory.errors import DecisionRefused, MemoryStoreError
from hitl.base import EscalationStatus, SlaLevel
from hitl.desk import MAX_AUTHOR_CHARS, DecisionDesk, checked_author
from hitl.in_memory import InMemoryEscalationQueue
from hitl.sla import SlaPolicy
from memory.audit_memory import InMemoryAuditLog
from tests.unit.hitl.test_desk import T0, Clock, Events, escalation

BAD_AUTHORS = [
    "",
    "   ",
    "\t\n",
    "ana\x00",
    "\x1b]0;owned\x07ana",
    "ana\rbo",
    "ana\u202e",  # a bidirectional override: prints one name, is another
    "ana\u2028bo",
    "a" * (MAX_AUTHOR_CHARS + 1),
]

Decide = Callable[[DecisionDesk, str], Awaitable[Any]]
DECISIONS: dict[str, Decide] = {
    "answer": lambda d, by: d.answer("esc-1", "use postgres", by=by),
    "approve": lambda d, by: d.approve("esc-2", by=by),
    "reject": lambda d, by: d.reject("esc-2", reason="no", by=by),
    "defer": lambda d, by: d.defer("esc-2", by=by),
    "batch_approve": lambda d, by: d.batch_approve(["esc-3"], by=by),
}


def _desk(audit: InMemoryAuditLog | None = None) -> DecisionDesk:
    audit = audit or InMemoryAuditLog()
    # The queue holds the audit writer, as the Postgres queue does in production (factory/wiring.py).
    return DecisionDesk(InMemoryEscalationQueue(recorder=audit), audit, Events(), clock=Clock())


async def _opened(desk: DecisionDesk) -> DecisionDesk:
    await desk.queue.open(escalation(1, "clarification", "high"))
    await desk.queue.open(escalation(2, "approval", "medium"))
    await desk.queue.open(escalation(3, "approval", "low"))
    return desk


@pytest.mark.parametrize("author", BAD_AUTHORS)
@pytest.mark.parametrize("decision", list(DECISIONS))
async def test_every_decision_refuses_a_missing_or_unprintable_author(decision: str, author: str) -> None:
    desk = await _opened(_desk())
    with pytest.raises(DecisionRefused, match="author"):
        await DECISIONS[decision](desk, author)
    assert {e.status for e in await desk.queue.list_open()} == {EscalationStatus.OPEN}  # nothing decided
    assert all(e.version == 0 for e in await desk.queue.list_open())


async def test_an_author_is_stripped_and_kept() -> None:
    desk = await _opened(_desk())
    decided = await desk.approve("esc-2", by="  ana lópez  ")
    assert decided.decided_by == "ana lópez" == checked_author("ana lópez")
    assert checked_author("a" * MAX_AUTHOR_CHARS) == "a" * MAX_AUTHOR_CHARS


async def test_a_decision_whose_audit_entry_cannot_be_written_is_not_made() -> None:
    audit = InMemoryAuditLog()
    desk = await _opened(_desk(audit))
    await audit.append("run-0", "earlier", "step", {})
    del audit._heads["run-0"]  # run-0's audit is broken: it refuses every append
    with pytest.raises(MemoryStoreError, match="esc-2 was left as it was"):
        await desk.approve("esc-2", by="ana")
    after = await desk.queue.get("esc-2")
    assert after is not None and (after.status, after.version, after.decided_by) == (EscalationStatus.OPEN, 0, None)
    assert [e.key for e in await audit.entries("run-0")] == ["earlier"]
    decided = await desk.answer("esc-1", "use postgres", by="ana")  # run-1's audit is fine
    assert decided.status is EscalationStatus.ANSWERED
    assert [e.kind for e in await audit.entries("run-1")] == ["escalation.decided"]


async def test_the_sla_ladder_skips_a_run_whose_audit_is_broken_and_climbs_the_others() -> None:
    audit = InMemoryAuditLog()
    clock = Clock()
    desk = DecisionDesk(InMemoryEscalationQueue(recorder=audit), audit, Events(), clock=clock, policy=SlaPolicy())
    await desk.queue.open(escalation(2, "approval", "high"))  # run-0
    await desk.queue.open(escalation(1, "approval", "high"))  # run-1
    await audit.append("run-0", "earlier", "step", {})
    del audit._heads["run-0"]
    clock.now = T0 + timedelta(hours=5)  # breached
    changed = await desk.tick()
    assert [e.id for e in changed] == ["esc-1"]
    assert (await desk.queue.get("esc-2")).escalation_level == 0  # type: ignore[union-attr]
    assert (await desk.queue.get("esc-1")).escalation_level == SlaLevel.BREACHED  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["use \x00 postgres", "use \ud800 postgres"])
def test_a_decision_text_postgres_cannot_store_is_refused_not_a_crash(text: str) -> None:
    from hitl.desk import checked_text

    with pytest.raises(DecisionRefused, match="cannot be stored|not a character"):
        checked_text(text, "answer", required=True)
