"""Turning a gate decision into an escalation an operator can decide on without digging."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hitl.base import Escalation, EscalationKind, Priority
from hitl.sla import SlaPolicy
from observability.text import storable, storable_data
from teams.base import StageRecord
from teams.gate import GateDecision
from teams.results import TaskResult

_DECLINE = "reject with a reason: the stage runs again and the team proceeds on its stated assumptions"
_CHOICES = {
    EscalationKind.APPROVAL: "approve (optional notes): the stage's artifacts are accepted and the run continues;"
    " reject with a reason: the stage runs again with your reason as feedback",
    EscalationKind.CLARIFICATION: f"answer: your answer is added to the objective and the stage runs again; {_DECLINE}",
    EscalationKind.BLOCKED: f"answer with what unblocks the team: the stage runs again with it; {_DECLINE}",
    EscalationKind.BUDGET: "approve: the run gets another budget of the same size and the stage runs again;"
    " reject with a reason: the run is cancelled",
}
_DEFER = "defer: decide later; the run keeps waiting until the new deadline's SLA runs out"


def escalation_for(
    run_id: str,
    stage: StageRecord,
    result: TaskResult,
    decision: GateDecision,
    created: datetime,
    sla: SlaPolicy | None = None,
) -> Escalation:
    """The escalation for a stage the gate stopped; its id is stable per attempt (idempotent)."""
    kind = EscalationKind(decision.kind or "blocked")
    priority = Priority(decision.priority or "high")
    if kind is EscalationKind.CLARIFICATION and result.clarification_needed:
        question = result.clarification_needed.question
    elif kind is EscalationKind.APPROVAL:
        question = f"Approve this stage's artifacts? {decision.reason}."
    elif kind is EscalationKind.BUDGET:
        question = f"{decision.reason}. Grant the run another budget of the same size?"
    else:
        question = f"The team is blocked: {decision.reason}. What unblocks it?"
    return Escalation(
        id=f"esc-{run_id.removeprefix('run-')}-{stage.index}-{stage.attempts}",
        run_id=run_id,
        stage_index=stage.index,
        team=stage.team,
        kind=kind,
        priority=priority,
        # The gate's reasons may quote a provider's or the factory's own error text: made storable.
        question=storable(question),
        context=storable_data(_context(result, decision, kind)),
        sla_deadline=(sla or SlaPolicy()).deadline(priority, created),
        created_at=created,
    )


def _context(result: TaskResult, decision: GateDecision, kind: EscalationKind) -> dict[str, Any]:
    return {
        "reason": decision.reason,
        "reasoning": result.reasoning[:2000],
        "blockers": result.blockers,
        "assumptions": result.assumptions_made,
        "confidence": result.confidence,
        "target_team": result.clarification_needed.target_team if result.clarification_needed else None,
        "artifacts": {a.name: a.content[:500] for a in result.artifacts},
        "choices": f"{_CHOICES[kind]}; {_DEFER}",
        **decision.context,
    }
