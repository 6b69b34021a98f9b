"""The confidence gate (DESIGN §5): what happens after a team's objective ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from teams.base import Run
from teams.results import TaskResult, TaskStatus


@dataclass(frozen=True)
class GateLimits:
    """Configurable bounds of one stage."""

    confidence_floor: float = 0.6
    retry_budget: int = 2
    iteration_cap: int = 6


class Verdict(StrEnum):
    ADVANCE = "advance"
    RETRY = "retry"
    CLARIFY = "clarify"
    ESCALATE = "escalate"


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict; for ESCALATE, the kind and priority of the escalation to open."""

    verdict: Verdict
    reason: str
    kind: str | None = None
    priority: str | None = None
    context: dict[str, Any] = field(default_factory=dict)  # more for the operator (e.g. a hop chain)


def decide(
    result: TaskResult, *, failures: int, executions: int, limits: GateLimits, system_blocked: bool
) -> GateDecision:
    """Decide one execution's outcome.

    ``failures`` counts executions that ended in unusable output so far (this one included);
    ``system_blocked`` marks a BLOCKED the factory produced because the output never validated.
    """
    if system_blocked:
        if failures <= limits.retry_budget and executions < limits.iteration_cap:
            return GateDecision(Verdict.RETRY, f"output unusable, retry {failures} of {limits.retry_budget}")
        return GateDecision(
            Verdict.ESCALATE,
            f"output unusable after {failures} attempts: {'; '.join(result.blockers)}",
            kind="blocked",
            priority="high",
        )
    if result.status is TaskStatus.BLOCKED:
        return GateDecision(Verdict.ESCALATE, "; ".join(result.blockers), kind="blocked", priority="high")
    if result.status is TaskStatus.NEEDS_CLARIFICATION:
        if executions >= limits.iteration_cap:
            return GateDecision(
                Verdict.ESCALATE,
                f"iteration cap of {limits.iteration_cap} executions reached",
                kind="blocked",
                priority="high",
            )
        return GateDecision(Verdict.CLARIFY, "the team asked a question")
    if result.confidence < limits.confidence_floor:
        return GateDecision(
            Verdict.ESCALATE,
            f"confidence {result.confidence:.2f} is below the floor {limits.confidence_floor:.2f}",
            kind="approval",
            priority="medium",
        )
    return GateDecision(Verdict.ADVANCE, f"complete with confidence {result.confidence:.2f}")


def limits_of(run: Run, default: GateLimits) -> GateLimits:
    """The gate limits of ``run``: its recorded policy's, else the process's."""
    policy = run.policy or {}
    return GateLimits(
        confidence_floor=float(policy.get("confidence_floor", default.confidence_floor)),
        retry_budget=int(policy.get("retry_budget", default.retry_budget)),
        iteration_cap=int(policy.get("iteration_cap", default.iteration_cap)),
    )
