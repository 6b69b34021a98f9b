"""Human in the loop: escalations that wait, durably, for an operator; decisions; the SLA ladder."""

from hitl.attention import Attention, attention
from hitl.base import (
    SLA,
    Change,
    Clock,
    DecisionRecorder,
    Escalation,
    EscalationKind,
    EscalationQueue,
    EscalationStatus,
    Priority,
    SlaLevel,
)
from hitl.desk import BatchOutcome, DecisionDesk, LowRisk
from hitl.sla import SlaPolicy

__all__ = [
    "SLA",
    "Attention",
    "BatchOutcome",
    "Change",
    "Clock",
    "DecisionDesk",
    "DecisionRecorder",
    "Escalation",
    "EscalationKind",
    "EscalationQueue",
    "EscalationStatus",
    "LowRisk",
    "Priority",
    "SlaLevel",
    "SlaPolicy",
    "attention",
]
