"""The confidence gate (DESIGN §5): what happens after a team's objective ends."""

from __future__ import annotations

from collections.abc import Sequence
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
    check_revisions: int = 2  # revisions after failed checks, before the findings go to the operator


class Verdict(StrEnum):
    ADVANCE = "advance"
    RETRY = "retry"
    REVISE = "revise"  # the factory's checks failed: the same team revises its result
    SEND_BACK = "send_back"  # they failed in an earlier team's files: that team revises them
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


def after_checks(
    failing: Sequence[str],
    *,
    revisions: int,
    executions: int,
    limits: GateLimits,
    others: Sequence[str] = (),
    findings: Sequence[dict[str, Any]] = (),
) -> GateDecision:
    """The verdict on a complete result whose checks ``failing`` failed (``revisions`` counts the
    revisions asked so far, this one included). ``others``: the earlier teams owning files the failures
    point at (a revision of this team cannot fix them): one is sent the findings, while the budget
    lasts; several, or none left, go to the operator."""
    names = ", ".join(failing)
    context = {"failing_checks": list(failing), "findings": list(findings)}
    within = revisions <= limits.check_revisions and executions < limits.iteration_cap
    if len(others) == 1 and within:
        return GateDecision(
            Verdict.SEND_BACK,
            f"checks {names} failed in files of {others[0]}: sent back to it, revision {revisions} of"
            f" {limits.check_revisions}",
            context={**context, "owners": list(others)},
        )
    if others:
        owners = ", ".join(others)
        return GateDecision(
            Verdict.ESCALATE,
            f"checks {names} fail in files of {owners}: approve to accept the result as it stands, reject"
            f" with a reason to run this team again, or revise the run from {others[0]} with the findings",
            kind="approval",
            priority="high",
            context={**context, "owners": list(others)},
        )
    if within:
        return GateDecision(Verdict.REVISE, f"checks {names} failed, revision {revisions} of {limits.check_revisions}")
    spent = min(revisions - 1, limits.check_revisions)
    after = f" still fail after {spent} revision{'s' if spent != 1 else ''}" if spent else " fail"
    return GateDecision(
        Verdict.ESCALATE,
        f"checks {names}{after}: approve to accept the result as it stands, or reject with guidance to run"
        " the team again",
        kind="approval",
        priority="high",
        context=context,
    )


def limits_of(run: Run, default: GateLimits) -> GateLimits:
    """The gate limits of ``run``: its recorded policy's, else the process's."""
    policy = run.policy or {}
    return GateLimits(
        confidence_floor=float(policy.get("confidence_floor", default.confidence_floor)),
        retry_budget=int(policy.get("retry_budget", default.retry_budget)),
        iteration_cap=int(policy.get("iteration_cap", default.iteration_cap)),
        check_revisions=int(policy.get("check_revisions", default.check_revisions)),
    )
