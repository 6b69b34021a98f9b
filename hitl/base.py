"""Contracts of the ``hitl`` package: escalations (questions and approvals waiting on a human),
the decisions an operator makes on them, and the SLA that says how long they may wait."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, Field

from factory.errors import MemoryStoreError


class EscalationKind(StrEnum):
    CLARIFICATION = "clarification"
    APPROVAL = "approval"
    BLOCKED = "blocked"
    BUDGET = "budget"


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class EscalationStatus(StrEnum):
    OPEN = "open"
    ANSWERED = "answered"
    APPROVED = "approved"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    EXPIRED = "expired"


#: Statuses that still wait on a human.
WAITING: frozenset[EscalationStatus] = frozenset({EscalationStatus.OPEN, EscalationStatus.DEFERRED})
#: Statuses that end an escalation: a decision was made.
DECIDED: frozenset[EscalationStatus] = frozenset(
    {EscalationStatus.ANSWERED, EscalationStatus.APPROVED, EscalationStatus.REJECTED, EscalationStatus.EXPIRED}
)


class SlaLevel(IntEnum):
    """The SLA ladder (DESIGN §9): each step raises ``escalation_level`` and emits an event."""

    ON_TIME = 0
    DUE_SOON = 1  # 25% of the time to decide is left
    BREACHED = 2  # the deadline passed
    FINAL = 3  # 2 h after the breach: the configured default action applies


#: Time to decide, by priority (DESIGN §9); ``SlaPolicy`` makes it configurable.
SLA: dict[Priority, timedelta] = {
    Priority.CRITICAL: timedelta(hours=1),
    Priority.HIGH: timedelta(hours=4),
    Priority.MEDIUM: timedelta(hours=24),
    Priority.LOW: timedelta(hours=72),
}

PRIORITY_RANK: dict[Priority, int] = {p: i for i, p in enumerate(Priority)}

#: The time now, injected so the SLA ladder is tested with a controllable clock.
Clock = Callable[[], datetime]


class Escalation(BaseModel):
    """A question or approval waiting on a human (DESIGN §4)."""

    id: str
    run_id: str
    stage_index: int
    team: str
    kind: EscalationKind
    priority: Priority
    question: str
    context: dict[str, Any] = Field(default_factory=dict)
    status: EscalationStatus = EscalationStatus.OPEN
    answer: str | None = None
    decided_by: str | None = None
    sla_deadline: datetime
    escalation_level: int = 0
    created_at: datetime
    decided_at: datetime | None = None
    #: When the current SLA window started: creation, or the last deferral.
    sla_started_at: datetime | None = None
    #: Bumped by every change; a decision names the version it was made on (optimistic concurrency).
    version: int = 0

    @property
    def waiting(self) -> bool:
        return self.status in WAITING

    def sla_start(self) -> datetime:
        return self.sla_started_at or self.created_at


class Change(BaseModel):
    """One change to an escalation, applied only if it is still at ``expected_version`` and waiting."""

    status: EscalationStatus
    answer: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    sla_deadline: datetime | None = None  # a deferral's new deadline ...
    sla_started_at: datetime | None = None  # ... and the start of the new SLA window
    escalation_level: int | None = None


#: An audit entry (key, kind, payload); the key makes recording it idempotent.
AuditRecord = tuple[str, str, dict[str, Any]]
#: Builds the audit entry of a change from the escalation as changed (the version it now has).
AuditOf = Callable[[Escalation], AuditRecord]


class EscalationQueue(Protocol):
    """Durable queue of escalations."""

    async def open(self, escalation: Escalation) -> Escalation:
        """Store a new escalation; idempotent by id (an existing one is returned unchanged)."""
        ...

    async def get(self, escalation_id: str) -> Escalation | None: ...

    async def list_open(self, run_id: str | None = None, *, brief: bool = False) -> list[Escalation]:
        """Escalations still waiting (open or deferred), by priority then SLA deadline; ``brief``:
        without their context (an empty dict), for lists and counts."""
        ...

    async def for_run(self, run_id: str) -> list[Escalation]:
        """Every escalation of one run, oldest first."""
        ...

    async def for_stage(self, run_id: str, stage_index: int) -> list[Escalation]:
        """Every escalation of one stage, oldest first (the stage's decision history)."""
        ...

    async def apply(
        self, escalation_id: str, expected_version: int, change: Change, *, audit: AuditOf | None = None
    ) -> Escalation | None:
        """Apply ``change`` if the escalation is still waiting at ``expected_version``; the changed
        escalation, or None when someone else changed it first.

        ``audit``: the change's audit entry, appended to the run's chain with the change, atomically,
        by a queue that holds an audit writer: if the entry cannot be written, nothing changed and
        ``MemoryStoreError`` says why. A queue without one leaves recording to the caller."""
        ...

    async def set_level(
        self, escalation_id: str, expected_version: int, level: int, *, audit: AuditOf | None = None
    ) -> Escalation | None:
        """Raise the SLA level of a waiting escalation at ``expected_version``; None if it changed.
        ``audit`` as for ``apply``."""
        ...

    async def close_for_run(
        self, run_id: str, *, by: str, reason: str | None, audit: AuditOf | None = None
    ) -> list[Escalation]:
        """Close every escalation of ``run_id`` still waiting, its run being cancelled: ``expired``,
        ``reason`` as the answer, decided by ``by`` now, the version bumped (a decision made on the
        version read before is refused); the escalations closed, oldest first. ``audit`` as for
        ``apply``: each one's entry is written with the change, atomically."""
        ...


class DecisionRecorder(Protocol):
    """Where decisions are recorded for good: the run's audit chain (``memory.AuditLog`` fits)."""

    async def append(self, run_id: str, key: str, kind: str, payload: dict[str, Any]) -> Any: ...


def ordered(items: Sequence[Escalation]) -> list[Escalation]:
    """Most urgent first: priority, then SLA deadline, then age."""
    return sorted(items, key=lambda e: (PRIORITY_RANK[e.priority], e.sla_deadline, e.created_at))


def unrecorded(changed: Escalation, why: str) -> MemoryStoreError:
    """The error of a change that was not made because its audit entry could not be written."""
    first = why.strip().splitlines()[0] if why.strip() else "no reason given"
    return MemoryStoreError(
        f"{changed.id} was left as it was: the audit of run {changed.run_id} refused its entry ({first});"
        f" check the chain with `factory audit verify {changed.run_id}`"
    )
