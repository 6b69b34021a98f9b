"""The SLA ladder (DESIGN §9): how long an escalation may wait, and what happens as time runs out.

Deadlines by priority (critical 1 h, high 4 h, medium 24 h, low 72 h by default). The ladder
raises ``escalation_level`` and emits an event at 25% time left, at the breach, and 2 h after the
breach; at that final level the configured default action applies: by default none (the run keeps
waiting), except ``low`` approvals, which are approved automatically when that is enabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hitl.base import SLA, Escalation, EscalationKind, Priority, SlaLevel


@dataclass(frozen=True)
class SlaPolicy:
    """Configurable SLA: time to decide per priority, the ladder's steps and the default action."""

    deadlines: dict[Priority, timedelta] = field(default_factory=lambda: dict(SLA))
    due_soon_fraction: float = 0.25  # DUE_SOON when this share of the window is left
    final_after_breach: timedelta = timedelta(hours=2)
    auto_approve_low: bool = False  # at FINAL, approve ``low`` approvals instead of waiting on

    def deadline(self, priority: Priority, start: datetime) -> datetime:
        return start + self.deadlines[priority]

    def level(self, escalation: Escalation, now: datetime) -> SlaLevel:
        """Where on the ladder ``escalation`` stands at ``now``."""
        deadline = escalation.sla_deadline
        if now >= deadline + self.final_after_breach:
            return SlaLevel.FINAL
        if now >= deadline:
            return SlaLevel.BREACHED
        window = deadline - escalation.sla_start()
        if now >= deadline - window * self.due_soon_fraction:
            return SlaLevel.DUE_SOON
        return SlaLevel.ON_TIME

    def auto_approves(self, escalation: Escalation) -> bool:
        """Whether the default action at FINAL decides ``escalation`` (else it keeps waiting)."""
        return (
            self.auto_approve_low and escalation.kind is EscalationKind.APPROVAL and escalation.priority is Priority.LOW
        )

    def describe(self) -> dict[str, object]:
        """The policy, for ``factory doctor``."""
        return {
            "sla_hours": {p.value: d.total_seconds() / 3600 for p, d in self.deadlines.items()},
            "due_soon_fraction": self.due_soon_fraction,
            "final_after_breach_hours": self.final_after_breach.total_seconds() / 3600,
            "auto_approve_low": self.auto_approve_low,
        }
