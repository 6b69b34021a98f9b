"""What the MCP tools, resources and prompt show: pure functions from the factory's models to JSON and text.

The shapes mirror the REST API's (``api.rest``): a run is ``run_json`` (and with its stages the shape of
``factory run --json``), a decision ``decided_json``, the attention list its REST body. An assistant gets
a little more: a one-line ``headline`` to say first, and ``next``, the tool to call for what usually
follows, so "what needs me?" → "approve the first one" takes no guessing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api.rest.runs import run_json
from factory.outcome_json import outcome_json
from hitl.attention import Attention, Waiting
from hitl.base import Escalation, EscalationKind
from teams.base import RunStatus
from teams.pipeline import RunOutcome

#: Which tools decide an escalation of each kind, and what each does (the desk's rules, in words).
DECIDE_WITH: dict[EscalationKind, list[tuple[str, str]]] = {
    EscalationKind.APPROVAL: [
        ("factory_approve(escalation_id, notes?)", "accept the stage's artifacts as they stand; the run continues"),
        ("factory_reject(escalation_id, reason)", "the stage runs again with the reason as feedback"),
    ],
    EscalationKind.BUDGET: [
        ("factory_approve(escalation_id, notes?)", "grant one more budget of the same size; the run continues"),
        ("factory_reject(escalation_id, reason)", "the run is cancelled"),
    ],
    EscalationKind.CLARIFICATION: [
        ("factory_answer(escalation_id, text)", "the stage runs again with the answer added to its objective"),
        ("factory_reject(escalation_id, reason)", "the team proceeds on its own assumptions, with the reason"),
    ],
    EscalationKind.BLOCKED: [
        ("factory_answer(escalation_id, text)", "say what unblocks the team; the stage runs again with it"),
        ("factory_reject(escalation_id, reason)", "the team proceeds on its own assumptions, with the reason"),
    ],
}
DEFER = ("factory_defer(escalation_id, hours?)", "decide later; the run keeps waiting until the new deadline")


def span(seconds: float) -> str:
    """A duration as a person says it: ``40s``, ``25 min``, ``3.5 h``, ``2.0 days``."""
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def due(deadline: datetime, now: datetime) -> str:
    """``due in 3.5 h`` or ``20 min past its SLA``."""
    left = (deadline - now).total_seconds()
    return f"due in {span(left)}" if left >= 0 else f"{span(left)} past its SLA"


def decide_with(e: Escalation) -> list[dict[str, str]]:
    """The tools that decide ``e``, each with what it does."""
    return [{"tool": tool, "effect": effect} for tool, effect in [*DECIDE_WITH[e.kind], DEFER]]


def attention_line(position: int, item: Waiting) -> str:
    e = item.escalation
    left = f"due in {span(item.due_in_s)}" if item.due_in_s >= 0 else f"{span(item.due_in_s)} late"
    deferred = ", deferred" if e.status.value == "deferred" else ""
    where = f"{e.priority.value} {e.kind.value}, {e.team}, run {e.run_id}, {left}{deferred}"
    return f"{position}. {e.id} ({where}): {e.question}"


def what_needs_me(att: Attention) -> dict[str, Any]:
    """The attention list for an assistant: the headline, then one entry per escalation, most urgent first."""
    items = [
        {
            "position": n,
            "escalation_id": w.escalation.id,
            "run_id": w.escalation.run_id,
            "team": w.escalation.team,
            "kind": w.escalation.kind.value,
            "priority": w.escalation.priority.value,
            "status": w.escalation.status.value,
            "question": w.escalation.question,
            "sla_deadline": w.escalation.sla_deadline.isoformat(),
            "due_in_s": round(w.due_in_s),
            "sla_level": int(w.sla_level),
            "line": attention_line(n, w),
        }
        for n, w in enumerate(att.items, start=1)
    ]
    follow = (
        "show one with factory_show_escalation(escalation_id), then decide it (factory_approve, factory_answer,"
        " factory_reject or factory_defer)"
        if items
        else "nothing to decide; factory_list_runs shows what is running"
    )
    return {
        "headline": att.headline(),
        "total": att.total,
        "breached": att.breached,
        "due_soon": att.due_soon,
        "blocked_runs": [r.model_dump(mode="json") for r in att.blocked_runs],
        "items": items,
        "next": follow,
    }


def attention_json(att: Attention) -> dict[str, Any]:
    """The attention list as the REST API's ``GET /api/v1/escalations`` gives it."""
    return {
        "headline": att.headline(),
        **att.model_dump(mode="json", exclude={"items"}),
        "items": [w.escalation.model_dump(mode="json") | {"sla_level": int(w.sla_level)} for w in att.items],
    }


def escalation_view(e: Escalation, now: datetime) -> dict[str, Any]:
    """One escalation, everything needed to decide it, and the tools that do."""
    shown = e.model_dump(mode="json")
    if not e.waiting:
        who = f" by {e.decided_by}" if e.decided_by else ""
        return {**shown, "headline": f"{e.id} is {e.status.value}{who}; nothing to decide"}
    return {
        **shown,
        "headline": f"{e.id}: {e.priority.value} {e.kind.value} from {e.team}, {due(e.sla_deadline, now)}",
        "decide_with": decide_with(e),
    }


def run_view(outcome: RunOutcome) -> dict[str, Any]:
    """A run with its stages, open escalations and audit head (``GET /api/v1/runs/{id}``), and a headline."""
    run, stages = outcome.run, outcome.stages
    done = sum(s.status.value == "complete" for s in stages)
    headline = f"run {run.id} is {run.status.value}: {done} of {len(run.pipeline)} stages complete"
    if outcome.escalations:
        ids = ", ".join(e.id for e in outcome.escalations)
        headline += f"; waiting on {ids}"
        follow = "see each with factory_show_escalation(escalation_id) and decide it"
    elif run.status is RunStatus.COMPLETE:
        follow = (
            "check its audit with factory_verify_audit(run_id); its files: resource factory://runs/{run_id}/artifacts"
        )
    elif run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        follow = "submit it again with factory_submit, or ask about it with factory_ask_project"
    else:
        follow = "it is running; ask again with factory_run_status(run_id) in a little while"
    if outcome.error:
        headline += f"; error: {outcome.error}"
    return {**outcome_json(outcome), **run_json(run), "headline": headline, "next": follow.replace("{run_id}", run.id)}


def _listed(label: str, values: Any, limit: int = 10) -> list[str]:
    items = [str(v) for v in (values or [])][:limit]
    return [f"{label}:", *(f"- {v}" for v in items)] if items else []


def review_prompt(e: Escalation, requirement: str | None, now: datetime) -> str:
    """The reviewer's brief for ``e``: what is asked and why, the team's case, the choices, and the tool to call."""
    c = e.context
    lines = [
        f"You are helping an operator of the AI Software Factory decide escalation {e.id}.",
        f"Run {e.run_id}, stage {e.stage_index + 1} ({e.team}); a {e.priority.value}-priority {e.kind.value},"
        f" {due(e.sla_deadline, now)} (SLA deadline {e.sla_deadline.isoformat()}).",
    ]
    if requirement:
        lines += ["", f"The run's requirement: {requirement[:2000]}"]
    lines += ["", f"Question: {e.question}"]
    if c.get("reason"):
        lines.append(f"Why the run stopped: {str(c['reason'])[:800]}")
    if c.get("confidence") is not None:
        lines.append(f"The team's confidence: {c['confidence']}")
    if c.get("reasoning"):
        lines += ["", f"The team's reasoning: {str(c['reasoning'])[:2000]}"]
    for label, key in (("Blockers", "blockers"), ("Assumptions the team made", "assumptions"), ("Route", "hop_chain")):
        if listed := _listed(label, c.get(key)):
            lines += ["", *listed]
    excerpts = list((c.get("artifacts") or {}).items())[:6]
    for name, excerpt in excerpts:
        lines += ["", f"Artifact {name} (excerpt):", "```", str(excerpt)[:1200], "```"]
    if excerpts:
        lines.append(f"The whole files: resource factory://runs/{e.run_id}/artifacts")
    if not e.waiting:
        who = f" by {e.decided_by}" if e.decided_by else ""
        lines += ["", f"It is {e.status.value}{who} already: there is nothing left to decide."]
        return "\n".join(lines)
    lines += ["", "Choices:"]
    lines += [f"- {tool}: {effect}" for tool, effect in [*DECIDE_WITH[e.kind], DEFER]]
    lines += [
        "",
        "Weigh the question against the reasoning, blockers, assumptions and excerpts; say what you recommend"
        " and why in two or three sentences, then ask the operator to confirm. Once they do, call the tool"
        f" with escalation_id={e.id!r} (a rejection needs a reason; an answer needs its text).",
    ]
    return "\n".join(lines)
