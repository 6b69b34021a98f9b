"""Asking another team (DESIGN §6): a NEEDS_CLARIFICATION goes through the broker, audited and
announced whatever comes of it; what no team answered goes to the human."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, Protocol

from broker.base import BrokerLimits, BrokerOutcome, ClarificationBroker, ClarificationRequest, Refusal
from memory.base import AuditLog
from teams.base import Run, RunStore, StageRecord
from teams.gate import GateDecision, Verdict
from teams.lease import Lease
from teams.results import TaskResult
from teams.roster import Team


class Emit(Protocol):
    def __call__(self, event_type: str, run_id: str, /, **data: Any) -> Awaitable[None]: ...


async def ask_team(
    broker: ClarificationBroker | None,
    store: RunStore,
    audit: AuditLog,
    emit: Emit,
    run: Run,
    stage: StageRecord,
    lease: Lease,
    member: Team,
    result: TaskResult,
    limits: BrokerLimits | None = None,
) -> BrokerOutcome:
    """Ask the target team of ``result``'s question (within ``limits``, the run's; default the
    broker's); without a broker the request is refused."""
    assert result.clarification_needed is not None
    stage.clarifications += 1
    await store.save_stage(stage, lease=lease)
    request = ClarificationRequest(
        id=f"{run.id}:{stage.index}:{stage.attempts}:q{stage.clarifications}",
        run_id=run.id,
        objective_id=f"{run.id}:{stage.index}",
        from_team=member.slug,
        target_team=result.clarification_needed.target_team,
        question=result.clarification_needed.question,
        hop_chain=[member.slug],
        context=member.goal[:8000],
        created_at=datetime.now(UTC),
    )
    where = {"stage": stage.index, "team": stage.team, "request_id": request.id}
    await emit("clarification.requested", run.id, **where, target=request.target_team, question=request.question)
    if broker is None:
        outcome = BrokerOutcome(
            request=request, refusal=Refusal.UNAVAILABLE, detail="no clarification broker is running"
        )
    else:
        outcome = await broker.request(request, limits)
    status = outcome.status
    await audit.append(
        run.id,
        f"clarification.{request.id}",
        "clarification",
        {
            **where,
            "question": request.question,
            "hop_chain": [*request.hop_chain, request.target_team],
            "outcome": status,
            "detail": outcome.detail,
            "answer": outcome.reply.answer if outcome.reply else None,
            "answered_by": outcome.reply.responder if outcome.reply else None,
        },
    )
    if outcome.answered:
        await emit("clarification.answered", run.id, **where, target=request.target_team)
    else:
        await emit("clarification.refused", run.id, **where, reason=status, detail=outcome.detail)
    return outcome


def unanswered(outcome: BrokerOutcome) -> GateDecision:
    """A clarification no team answered goes to the human, with the route it took and why it stopped."""
    reason = outcome.status
    return GateDecision(
        Verdict.ESCALATE,
        f"clarification {reason}: {outcome.detail}" if outcome.detail else f"clarification {reason}",
        kind="clarification",
        priority="high",
        context={"hop_chain": [*outcome.request.hop_chain, outcome.request.target_team], "broker_outcome": reason},
    )


def broker_limits_of(run: Run, broker: ClarificationBroker | None) -> BrokerLimits | None:
    """The clarification limits of ``run``: its recorded policy's over the broker's own."""
    policy = run.policy or {}
    if broker is None or not policy:
        return None
    base = broker.limits
    return dataclasses.replace(
        base,
        max_per_objective=int(policy.get("clarify_max_per_objective", base.max_per_objective)),
        max_depth=int(policy.get("clarify_max_depth", base.max_depth)),
        reply_timeout_s=float(policy.get("clarify_reply_timeout_s", base.reply_timeout_s)),
    )
