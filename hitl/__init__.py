"""Human in the loop: escalations that wait, durably, for an operator."""

from hitl.base import SLA, Escalation, EscalationKind, EscalationQueue, EscalationStatus, Priority

__all__ = ["SLA", "Escalation", "EscalationKind", "EscalationQueue", "EscalationStatus", "Priority"]
