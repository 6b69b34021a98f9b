"""Turning a gate decision into an escalation an operator can decide on without digging."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hitl.base import SLA, Escalation, EscalationKind, Priority
from teams.base import StageRecord
from teams.gate import GateDecision
from teams.results import TaskResult

_CHOICES = {
    EscalationKind.APPROVAL: "approve: the stage's artifacts are accepted and the run continues;"
    " reject with a reason: the stage runs again with your reason as feedback",
    EscalationKind.CLARIFICATION: "answer: your answer is added to the objective and the stage runs again",
    EscalationKind.BLOCKED: "answer with what unblocks the team: the stage runs again with it",
}


def escalation_for(
    run_id: str, stage: StageRecord, result: TaskResult, decision: GateDecision, created: datetime
) -> Escalation:
    """The escalation for a stage the gate stopped; its id is stable per attempt (idempotent)."""
    kind = EscalationKind(decision.kind or "blocked")
    priority = Priority(decision.priority or "high")
    if kind is EscalationKind.CLARIFICATION and result.clarification_needed:
        question = result.clarification_needed.question
    elif kind is EscalationKind.APPROVAL:
        question = f"Approve this stage's artifacts? {decision.reason}."
    else:
        question = f"The team is blocked: {decision.reason}. What unblocks it?"
    return Escalation(
        id=f"esc-{run_id.removeprefix('run-')}-{stage.index}-{stage.attempts}",
        run_id=run_id,
        stage_index=stage.index,
        team=stage.team,
        kind=kind,
        priority=priority,
        question=question,
        context=_context(result, decision, kind),
        sla_deadline=created + SLA[priority],
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
        "choices": _CHOICES.get(kind, ""),
        **decision.context,
    }
