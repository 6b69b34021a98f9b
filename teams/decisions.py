"""What the operator's decisions on a stage's escalations mean for that stage when its run resumes.

approved approval → the stage's result is accepted as it stands · answered, or rejected with a
reason → the stage runs again, every decision so far anchored in its objective · approved budget
→ runs again on the granted budget · rejected budget → the run is cancelled · anything still
waiting → the run keeps waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hitl.base import DECIDED, Escalation, EscalationKind, EscalationStatus


class Resumption(StrEnum):
    WAIT = "wait"
    COMPLETE = "complete"
    RERUN = "rerun"
    CANCEL = "cancel"


@dataclass(frozen=True)
class StageDecision:
    """How a waiting stage resumes, the operator's notes for its objective, and the deciding escalation."""

    action: Resumption
    notes: list[str] = field(default_factory=list)
    decided: Escalation | None = None


def operator_note(escalation: Escalation) -> str | None:
    """A decision as a note in the stage's objective (None: nothing for the team to act on)."""
    e, text = escalation, escalation.answer or ""
    if e.status is EscalationStatus.ANSWERED:
        return f"The operator answered {e.question!r}: {text}"
    if e.status is EscalationStatus.REJECTED and e.kind is EscalationKind.APPROVAL:
        return f"The operator rejected your previous result: {text}. Address this in your new result."
    if e.status is EscalationStatus.REJECTED:
        return f"The operator declined {e.question!r}: {text}. Proceed on your stated assumptions."
    if e.status is EscalationStatus.APPROVED and e.kind is EscalationKind.BUDGET and text:
        return f"The operator granted more budget: {text}"
    return None


def stage_decision(history: list[Escalation]) -> StageDecision:
    """How a stage that waits on a human resumes, from its escalations (oldest first)."""
    if any(e.waiting for e in history):
        return StageDecision(Resumption.WAIT)
    notes = [n for n in (operator_note(e) for e in history if e.status in DECIDED) if n]
    decided = [e for e in history if e.status in DECIDED]
    if not decided:  # no escalation was stored before a crash: run the stage again
        return StageDecision(Resumption.RERUN, notes)
    latest = decided[-1]
    if latest.kind is EscalationKind.BUDGET:
        action = Resumption.RERUN if latest.status is EscalationStatus.APPROVED else Resumption.CANCEL
    elif latest.kind is EscalationKind.APPROVAL and latest.status is EscalationStatus.APPROVED:
        action = Resumption.COMPLETE
    else:
        action = Resumption.RERUN
    return StageDecision(action, notes, latest)
