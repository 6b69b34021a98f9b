"""What the MCP tools, resources and prompt show, and how their refusals read (pure functions)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from api.mcp import render
from api.mcp.errors import UNEXPECTED, plain
from api.problems import Problem
from factory.errors import DecisionRefused, RunNotFound
from hitl.attention import attention
from hitl.base import Escalation, EscalationKind, EscalationStatus, Priority
from hitl.sla import SlaPolicy

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def escalation(kind: EscalationKind = EscalationKind.APPROVAL, **fields: Any) -> Escalation:
    values: dict[str, Any] = {
        "id": f"esc-{kind.value}",
        "run_id": "run-1",
        "stage_index": 0,
        "team": "business-analysis",
        "kind": kind,
        "priority": Priority.HIGH,
        "question": "Approve this stage's artifacts?",
        "sla_deadline": NOW + timedelta(hours=3),
        "created_at": NOW - timedelta(hours=1),
        "context": {
            "reason": "confidence 0.50 is below the floor 0.60",
            "reasoning": "We chose Postgres for durability.",
            "blockers": ["no traffic figures"],
            "assumptions": ["100 writes/s"],
            "confidence": 0.5,
            "artifacts": {"analysis/scope.md": "# Scope\nlinks, redirects"},
        },
    }
    return Escalation(**(values | fields))


def test_the_attention_list_puts_the_most_urgent_first_with_a_headline_and_positions() -> None:
    low = escalation(id="esc-low", priority=Priority.LOW, sla_deadline=NOW + timedelta(hours=70))
    critical = escalation(
        EscalationKind.CLARIFICATION,
        id="esc-crit",
        priority=Priority.CRITICAL,
        sla_deadline=NOW - timedelta(minutes=20),
    )
    shown = render.what_needs_me(attention([low, critical], SlaPolicy(), NOW))
    assert shown["headline"].startswith("2 waiting on you (1 critical, 1 low); 1 past their SLA")
    assert [(i["position"], i["escalation_id"]) for i in shown["items"]] == [(1, "esc-crit"), (2, "esc-low")]
    assert shown["items"][0]["line"].startswith("1. esc-crit (critical clarification, business-analysis, run run-1,")
    assert "late" in shown["items"][0]["line"] and "factory_show_escalation" in shown["next"]
    nothing = render.what_needs_me(attention([], SlaPolicy(), NOW))
    assert (nothing["headline"], nothing["items"]) == ("nothing needs you", [])


@pytest.mark.parametrize(
    ("kind", "tool"),
    [
        (EscalationKind.APPROVAL, "factory_approve"),
        (EscalationKind.BUDGET, "factory_approve"),
        (EscalationKind.CLARIFICATION, "factory_answer"),
        (EscalationKind.BLOCKED, "factory_answer"),
    ],
)
def test_an_escalation_names_the_tools_that_decide_it(kind: EscalationKind, tool: str) -> None:
    view = render.escalation_view(escalation(kind), NOW)
    tools = [d["tool"].split("(")[0] for d in view["decide_with"]]
    assert tools == [tool, "factory_reject", "factory_defer"]
    assert view["headline"] == f"esc-{kind.value}: high {kind.value} from business-analysis, due in 3.0 h"


def test_a_decided_escalation_has_nothing_left_to_decide() -> None:
    decided = escalation(status=EscalationStatus.APPROVED, decided_by="ana (token ci-bot)")
    view = render.escalation_view(decided, NOW)
    assert (
        "decide_with" not in view
        and view["headline"] == "esc-approval is approved by ana (token ci-bot); nothing to decide"
    )
    brief = render.review_prompt(decided, "Build a URL shortener", NOW)
    assert "approved by ana (token ci-bot) already" in brief and "Choices" not in brief


def test_the_review_prompt_gathers_what_a_reviewer_needs_and_the_tool_to_call() -> None:
    brief = render.review_prompt(escalation(), "Build a URL shortener", NOW)
    for expected in (
        "Approve this stage's artifacts?",
        "confidence 0.50 is below the floor 0.60",
        "We chose Postgres for durability.",
        "- no traffic figures",
        "- 100 writes/s",
        "Artifact analysis/scope.md (excerpt):",
        "# Scope\nlinks, redirects",
        "due in 3.0 h (SLA deadline 2025-03-01T15:00:00+00:00)",
        "Build a URL shortener",
        "- factory_approve(escalation_id, notes?)",
        "- factory_reject(escalation_id, reason)",
        "escalation_id='esc-approval'",
    ):
        assert expected in brief, expected


def test_spans_read_as_a_person_says_them() -> None:
    assert [render.span(s) for s in (40, 25 * 60, 3.5 * 3600, 3 * 86400, -600)] == [
        "40s", "25 min", "3.5 h", "3.0 days", "10 min"
    ]  # fmt: skip
    assert render.due(NOW - timedelta(minutes=10), NOW) == "10 min past its SLA"


class _Args(BaseModel):
    escalation_id: str = Field(max_length=5)
    hours: float = Field(gt=0)


def _wrapped(inner: BaseException) -> Exception:
    """``inner`` as FastMCP hands it back: raised again inside an ``except``, with a message around it."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise ValueError(f"Error executing tool x: {exc}") from exc
    except ValueError as outer:
        return outer


def test_refusals_read_as_the_cli_reads_them(caplog: pytest.LogCaptureFixture) -> None:
    assert plain(_wrapped(RunNotFound("no run 'run-x'")), "factory_run_status") == "no run 'run-x'"
    assert plain(_wrapped(DecisionRefused("the reason is empty")), "t") == "the reason is empty"
    scope = Problem(403, "token 'dash' has the viewer scope; this needs operator")
    assert plain(_wrapped(scope), "factory_approve") == "token 'dash' has the viewer scope; this needs operator"
    with pytest.raises(ValidationError) as bad:
        _Args.model_validate({"escalation_id": "secret-value-xyz", "hours": -1})
    said = plain(_wrapped(bad.value), "factory_defer")
    assert said.startswith("invalid arguments for factory_defer: escalation_id: String should have at most 5")
    assert "hours: Input should be greater than 0" in said and "secret-value-xyz" not in said
    with caplog.at_level(logging.ERROR, logger="api.mcp.errors"):
        assert plain(_wrapped(KeyError("internal detail")), "factory_submit") == UNEXPECTED
    assert "factory_submit failed" in caplog.text  # logged with its traceback, never shown
