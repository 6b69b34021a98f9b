"""The MCP tools: the factory's decision queue, runs, questions and audit, for an AI assistant.

Each tool is thin: check the caller's scope (reading needs ``viewer``; deciding, submitting and
cancelling need ``operator``), call one ``Operations`` method, render (``api.mcp.render``). Arguments are
validated from the type hints (bounded lengths, ranges, enums) before a tool runs; the values' own rules
(an empty reason, an oversized requirement, an unknown team) stay in the services, which refuse with the
CLI's words. A decision is recorded as made by the token's actor (``ana (token ci-bot)``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from pydantic import Field

from api.mcp import render
from api.mcp.identity import Identity, current_request
from api.rest.escalations import decided_json
from api.rest.runs import run_json
from factory.operations import Operations
from factory.tokens import ApiToken, Scope
from teams.base import RunStatus

_TEXT = 256 * 1024  # far above the services' own limits: those refuse with their own words

EscalationId = Annotated[
    str,
    Field(
        min_length=1, max_length=200, description="The escalation's id (esc-...), as factory_what_needs_me lists it."
    ),
]
RunId = Annotated[str, Field(min_length=1, max_length=200, description="The run's id (run-YYYYMMDD-HHMMSS-xxxxxxxx).")]
Answer = Annotated[str, Field(max_length=_TEXT, description="Your answer to the team's question, in plain words.")]
Notes = Annotated[str | None, Field(max_length=_TEXT, description="Optional notes kept with the approval.")]
Reason = Annotated[str, Field(max_length=_TEXT, description="Why; the stage runs again with it as feedback.")]
Hours = Annotated[
    float | None,
    Field(
        gt=0, le=24 * 30, description="Decide within this many hours (default: one more SLA window of its priority)."
    ),
]
Requirement = Annotated[str, Field(max_length=_TEXT, description="What to build, in plain words.")]
Pipeline = Annotated[
    str,
    Field(
        max_length=2000,
        description="phase1 (business-analysis, solution-architecture, backend-engineering, qa-engineering,"
        " documentation), full (all 17 teams), or team slugs separated by commas.",
    ),
]
Question = Annotated[str, Field(max_length=_TEXT, description="A question about past runs and their decisions.")]
Limit = Annotated[int, Field(ge=1, le=200, description="How many runs, newest first.")]
Before = Annotated[str | None, Field(max_length=300, description="next_before of the previous page, for the next one.")]
CancelReason = Annotated[str | None, Field(max_length=_TEXT, description="Why the run stops; kept in its audit.")]

READS = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)
DECIDES = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
ENDS = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False)

Require = Callable[[Scope], Awaitable[ApiToken]]


def register_tools(server: FastMCP[Any], ops: Operations, identity: Identity) -> None:
    """Add every tool to ``server``; ``identity`` tells whose token each call carries."""

    async def require(needed: Scope) -> ApiToken:
        return await identity.require(current_request(server), needed)

    _decision_queue(server, ops, require)
    _decisions(server, ops, require)
    _runs(server, ops, require)


def _decision_queue(server: FastMCP[Any], ops: Operations, require: Require) -> None:
    @server.tool(
        name="factory_what_needs_me",
        title="What needs me?",
        annotations=READS,
        description="The attention list: every escalation waiting on a human (questions, approvals, blocked"
        " teams, spent budgets), most urgent first (priority, then SLA deadline), with a one-line headline"
        " to say first. Use it when the operator asks what needs them, what is waiting or what to decide;"
        " 'the first one' is position 1.",
    )
    async def factory_what_needs_me() -> dict[str, Any]:
        await require(Scope.VIEWER)
        return render.what_needs_me(await ops.attention())

    @server.tool(
        name="factory_show_escalation",
        title="Show an escalation",
        annotations=READS,
        description="Everything needed to decide one escalation: the question, why the run stopped, the"
        " team's reasoning, blockers, assumptions, artifact excerpts, its SLA deadline, and the tools that"
        " decide it with what each does. Use it before deciding, or when the operator asks about one.",
    )
    async def factory_show_escalation(escalation_id: EscalationId) -> dict[str, Any]:
        await require(Scope.VIEWER)
        return render.escalation_view(await ops.escalation(escalation_id), datetime.now(UTC))


def _decisions(server: FastMCP[Any], ops: Operations, require: Require) -> None:
    @server.tool(
        name="factory_answer",
        title="Answer an escalation",
        annotations=DECIDES,
        description="Answer a team's question (a clarification) or say what unblocks a blocked team; the"
        " stage runs again with the answer. Needs an operator token. Use it when the operator gives the"
        " answer; for an approval use factory_approve.",
    )
    async def factory_answer(escalation_id: EscalationId, text: Answer) -> dict[str, Any]:
        token = await require(Scope.OPERATOR)
        return decided_json(await ops.decide("answer", escalation_id, by=token.actor, text=text))

    @server.tool(
        name="factory_approve",
        title="Approve an escalation",
        annotations=DECIDES,
        description="Approve a stage's artifacts (or grant a spent budget once more); the run continues."
        " Needs an operator token. Use it only when the operator has said to approve.",
    )
    async def factory_approve(escalation_id: EscalationId, notes: Notes = None) -> dict[str, Any]:
        token = await require(Scope.OPERATOR)
        return decided_json(await ops.decide("approve", escalation_id, by=token.actor, text=notes))

    @server.tool(
        name="factory_reject",
        title="Reject an escalation",
        annotations=DECIDES,
        description="Reject with a reason: the stage runs again with the reason as feedback (a budget"
        " rejected cancels its run). The reason is required. Needs an operator token.",
    )
    async def factory_reject(escalation_id: EscalationId, reason: Reason) -> dict[str, Any]:
        token = await require(Scope.OPERATOR)
        return decided_json(await ops.decide("reject", escalation_id, by=token.actor, text=reason))

    @server.tool(
        name="factory_defer",
        title="Defer an escalation",
        annotations=DECIDES,
        description="Put a decision off: a new deadline in `hours` (default: one more SLA window); the run"
        " keeps waiting. Needs an operator token. Use it when the operator wants to decide later.",
    )
    async def factory_defer(escalation_id: EscalationId, hours: Hours = None) -> dict[str, Any]:
        token = await require(Scope.OPERATOR)
        until = None if hours is None else datetime.now(UTC) + timedelta(hours=hours)
        return decided_json(await ops.decide("defer", escalation_id, by=token.actor, until=until))


def _runs(server: FastMCP[Any], ops: Operations, require: Require) -> None:
    @server.tool(
        name="factory_submit",
        title="Submit a requirement",
        annotations=DECIDES,
        description="Start a run: the pipeline's teams turn the requirement into delivery artifacts. A"
        " factory worker (or this server) drives it; follow it with factory_run_status. Needs an operator"
        " token. Use it when the operator asks the factory to build something.",
    )
    async def factory_submit(requirement: Requirement, pipeline: Pipeline = "phase1") -> dict[str, Any]:
        token = await require(Scope.OPERATOR)
        run, who = await ops.submit(requirement, pipeline, by=token.actor)
        follow = f"follow it with factory_run_status({run.id!r}); decisions it needs appear in factory_what_needs_me"
        return {**run_json(run), "continued_by": who, "next": follow}

    @server.tool(
        name="factory_run_status",
        title="Run status",
        annotations=READS,
        description="One run: its status, each stage (team, status, attempts, tokens, cost, model), the"
        " escalations it waits on and its audit head. Use it to follow a run or answer 'how is it going?'.",
    )
    async def factory_run_status(run_id: RunId) -> dict[str, Any]:
        await require(Scope.VIEWER)
        return render.run_view(await ops.run(run_id))

    @server.tool(
        name="factory_list_runs",
        title="List runs",
        annotations=READS,
        description="Runs, newest first, optionally only those in one status (running, waiting_human,"
        " complete, failed, cancelled). Use it to find a run's id or see what is going on.",
    )
    async def factory_list_runs(
        status: RunStatus | None = None, limit: Limit = 20, before: Before = None
    ) -> dict[str, Any]:
        await require(Scope.VIEWER)
        page = await ops.runs(statuses=[status] if status else [], limit=limit, before=before)
        return {
            "runs": [run_json(r) for r in page.runs],
            "next_before": page.next_before,
        }

    @server.tool(
        name="factory_cancel_run",
        title="Cancel a run",
        annotations=ENDS,
        description="Stop a run for good, even while a worker drives it; its waiting escalations close."
        " Needs an operator token. Use it only when the operator asks to cancel or stop a run.",
    )
    async def factory_cancel_run(run_id: RunId, reason: CancelReason = None) -> dict[str, Any]:
        token = await require(Scope.OPERATOR)
        run = await ops.cancel(run_id, by=token.actor, reason=reason)
        return {**run_json(run), "cancelled_by": token.actor, "reason": reason}

    @server.tool(
        name="factory_ask_project",
        title="Ask about the project",
        annotations=READS,
        description="Answer a question about past runs (which database was chosen, why an ADR decided"
        " something, what a team assumed) from the factory's memory, citing what it used. Give run_id to"
        " ask about one run only.",
    )
    async def factory_ask_project(question: Question, run_id: RunId | None = None) -> dict[str, Any]:
        await require(Scope.VIEWER)
        return (await ops.ask(question, run_id=run_id)).model_dump(mode="json")

    @server.tool(
        name="factory_verify_audit",
        title="Verify a run's audit",
        annotations=READS,
        description="Check a run's immutable audit: the hash chain of its entries and the anchor in its"
        " bundle's manifest. intact=true means nothing was changed; otherwise problems says what. Use it"
        " before trusting a finished run's record.",
    )
    async def factory_verify_audit(run_id: RunId) -> dict[str, Any]:
        await require(Scope.VIEWER)
        report = await ops.audit_verify(run_id)
        state = "intact" if report.intact else "TAMPERED"
        return {
            **report.model_dump(mode="json"),
            "headline": f"the audit of {run_id} is {state} ({report.entries} entries)",
        }
