"""``/v1/escalations``: what waits on a human, and the decisions on it.

A decision is the desk's (its rules, its words); the token that made it is recorded with it
(``decided_by`` is the token's user and name), and its run continues as after the CLI's decision: a
worker is woken, or this process drives the run when no worker is alive.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from api.rest.app import Operator, State, Viewer
from api.rest.schemas import AnswerBody, ApproveBody, BatchApprove, DeferBody, RejectBody
from factory.errors import InputError
from factory.operations import Decided
from hitl.attention import Attention

router = APIRouter(prefix="/escalations", tags=["escalations"])


def decided_json(decided: Decided) -> dict[str, Any]:
    return {
        "escalation": decided.escalation.model_dump(mode="json"),
        "continued_by": decided.continued_by,
        "next": decided.next_step,
    }


#: What a list shows of an escalation; its context (reasoning, artifact excerpts) is in GET /escalations/{id}.
LISTED = {"context"}
#: A list read this long ago still serves (many clients polling share one read and one rendering);
#: decisions made through this process are seen at once, others' within this time.
RECENT_S = 0.5


@router.get(
    "",
    summary="The attention list: a summary, then what waits on you, most urgent first (context: GET one).",
    response_class=JSONResponse,
)
async def attention(
    api: State, _: Viewer, limit: Annotated[int, Query(ge=1, le=500, description="Items listed at most.")] = 50
) -> Response:
    summary = await api.ops.attention(recent_s=RECENT_S)
    rendered = api.rendered.get(limit)
    if rendered is None or rendered[0] is not summary:
        rendered = (summary, _render(summary, limit))
        if len(api.rendered) > 8:  # a few limits in use at once: kept bounded
            api.rendered.clear()
        api.rendered[limit] = rendered
    return Response(rendered[1], media_type="application/json")


def _render(summary: Attention, limit: int) -> bytes:
    items = [
        w.escalation.model_dump(mode="json", exclude=LISTED) | {"sla_level": int(w.sla_level)}
        for w in summary.items[:limit]
    ]
    body = {
        "headline": summary.headline(),
        **summary.model_dump(mode="json", exclude={"items": True, "oldest": {"__all__": {"escalation": LISTED}}}),
        "items": items,
    }
    return json.dumps(body, separators=(",", ":")).encode()


@router.get("/{escalation_id}", summary="Everything needed to decide one escalation.")
async def get_escalation(escalation_id: str, api: State, _: Viewer) -> dict[str, Any]:
    return (await api.ops.escalation(escalation_id)).model_dump(mode="json")


@router.post("/{escalation_id}/answer", summary="Answer a question; its stage runs again with the answer.")
async def answer(escalation_id: str, body: AnswerBody, api: State, token: Operator) -> dict[str, Any]:
    decided = await api.ops.decide("answer", escalation_id, by=token.actor, text=body.text, version=body.version)
    return decided_json(decided)


@router.post("/{escalation_id}/approve", summary="Approve a stage's artifacts (or more budget).")
async def approve(escalation_id: str, body: ApproveBody, api: State, token: Operator) -> dict[str, Any]:
    decided = await api.ops.decide("approve", escalation_id, by=token.actor, text=body.notes, version=body.version)
    return decided_json(decided)


@router.post("/{escalation_id}/reject", summary="Reject with a reason; the stage runs again with it.")
async def reject(escalation_id: str, body: RejectBody, api: State, token: Operator) -> dict[str, Any]:
    decided = await api.ops.decide("reject", escalation_id, by=token.actor, text=body.reason, version=body.version)
    return decided_json(decided)


@router.post("/{escalation_id}/defer", summary="Put a decision off to a new deadline; the run keeps waiting.")
async def defer(escalation_id: str, body: DeferBody, api: State, token: Operator) -> dict[str, Any]:
    if body.hours is not None and body.until is not None:
        raise InputError("give hours or until, not both")
    until = body.until
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if body.hours is not None and math.isfinite(body.hours):
        until = datetime.now(UTC) + timedelta(hours=body.hours)
    decided = await api.ops.decide("defer", escalation_id, by=token.actor, until=until, version=body.version)
    return decided_json(decided)


@router.post("/batch-approve", summary="Approve several low-risk escalations; others are refused with the reason.")
async def batch_approve(body: BatchApprove, api: State, token: Operator) -> dict[str, Any]:
    if not body.ids and not body.all_low_risk:
        raise InputError("name the escalations to approve (ids), or all_low_risk: true for every waiting low-risk one")
    outcome = await api.ops.batch_approve(None if body.all_low_risk else body.ids, by=token.actor, notes=body.notes)
    return {"approved": [e.id for e in outcome.approved], "refused": dict(outcome.refused)}
