"""Contracts of the ``hitl`` package: escalations (questions and approvals waiting on a human)."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, Field


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


#: Time to decide, by priority (DESIGN §9).
SLA: dict[Priority, timedelta] = {
    Priority.CRITICAL: timedelta(hours=1),
    Priority.HIGH: timedelta(hours=4),
    Priority.MEDIUM: timedelta(hours=24),
    Priority.LOW: timedelta(hours=72),
}

PRIORITY_RANK: dict[Priority, int] = {p: i for i, p in enumerate(Priority)}


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


class EscalationQueue(Protocol):
    """Durable queue of escalations."""

    async def open(self, escalation: Escalation) -> Escalation:
        """Store a new escalation; idempotent by id (an existing one is returned unchanged)."""
        ...

    async def get(self, escalation_id: str) -> Escalation | None: ...

    async def list_open(self, run_id: str | None = None) -> list[Escalation]:
        """Open escalations, by priority then SLA deadline."""
        ...
