"""What the chat shows of the verification gate (``chat.render``): check figures of a stage and of a
run, and an escalation card's findings, rendered as a browser would be given them (raw HTML on, so
escaping alone must keep a tool's or a team's words inert)."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from markdown_it import MarkdownIt

from chat.render import FINDINGS_SHOWN, checks_figures, escalation_card, failing_by_stage, findings_section
from hitl.base import Escalation, EscalationKind, Priority
from teams.base import StageRecord

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MD = MarkdownIt("commonmark", {"html": True})
HOSTILE = 'shown = "<img src=x onerror=window.__pwned=1>" + [x](javascript:1) **b**'
REASON = "checks python-syntax, ruff still fail after 0 revisions: approve to accept the result as it stands"
CONTEXT: dict[str, Any] = {
    "reason": REASON,
    "failing_checks": ["python-syntax", "ruff", "bandit"],
    "findings": [
        {"check": "python-syntax", "artifact": "backend/app.py", "line": 51, "message": f"SyntaxError: {HOSTILE}"},
        {"check": "ruff", "artifact": "backend/app.py", "line": 51, "message": "invalid-syntax:\n\n  Expected"},
    ],
}


def visible(rendered: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]*>", "", rendered)).split())


def card(context: dict[str, Any], question: str = f"Approve this stage's artifacts? {REASON}.") -> str:
    e = Escalation(
        id="esc-1", run_id="run-1", stage_index=2, team="backend-engineering", kind=EscalationKind.APPROVAL,
        priority=Priority.HIGH, question=question, context=context, sla_deadline=NOW + timedelta(hours=2),
        created_at=NOW,
    )  # fmt: skip
    return escalation_card(e, now=NOW)


def test_findings_say_which_check_which_file_and_line_and_the_message_inert() -> None:
    rendered = MD.render(findings_section(CONTEXT))
    assert not re.search(r"<(img|a|script)\b", rendered), rendered
    items = [visible(li) for li in re.findall(r"<li>(.*?)</li>", rendered, re.S)]
    assert items == [
        f"python-syntax · backend/app.py line 51: SyntaxError: {HOSTILE}",
        "ruff · backend/app.py line 51: invalid-syntax: Expected",  # a tool's lines, on one line
        "bandit failed (its report is in the run's audit)",  # failed with no finding recorded: still named
    ]
    assert "<strong>What the checks found</strong>" in rendered


def test_findings_name_the_owner_and_tolerate_odd_context() -> None:
    odd = {
        "owners": ["backend-engineering"],
        "findings": [{"check": "pytest", "artifact": "", "line": True, "message": 3}, "not a finding"],
        "failing_checks": "pytest",  # not a list: ignored, not spelled out letter by letter
    }
    rendered = MD.render(findings_section(odd))
    assert "What the checks found in files of backend-engineering" in visible(rendered)
    assert [visible(li) for li in re.findall(r"<li>(.*?)</li>", rendered, re.S)] == ["pytest · no one file: 3"]
    assert findings_section({"reason": "low confidence"}) == ""


def test_findings_are_bounded() -> None:
    many = [{"check": "ruff", "artifact": "a.py", "line": n, "message": "x" * 5000} for n in range(50)]
    rendered = MD.render(findings_section({"findings": many}))
    assert rendered.count("<li>") == FINDINGS_SHOWN + 1 and f"and {50 - FINDINGS_SHOWN} more" in rendered
    assert "x" * 300 not in rendered


def test_a_checks_card_shows_its_findings_and_its_reason_once() -> None:
    text = visible(MD.render(card(CONTEXT)))
    assert text.count(REASON) == 1 and "Why it stopped" not in text
    assert text.index("Question.") < text.index("What the checks found") < text.index("Choices")
    other = visible(MD.render(card({"reason": "confidence 0.40 is below the floor 0.60"}, "Approve? confidence")))
    assert "Why it stopped. confidence 0.40" in other and "What the checks found" not in other


def test_checks_figures_name_what_was_skipped_and_what_failed() -> None:
    assert checks_figures({"run": 5, "passed": 5}) == "checks 5/5 passed"
    assert checks_figures({"run": 1, "skipped": 1}) == "1 check skipped"
    line = checks_figures(
        {"run": 10, "passed": 5, "failed": 3, "skipped": 1, "errored": 1, "failing": ["ruff <b>"],
         "tests_passed": 3, "tests_failed": 1, "security": {"high": 1, "low": 0}}
    )  # fmt: skip
    assert visible(MD.render(line)) == (
        "checks 5/10 passed, 3 failed (ruff <b>), 1 could not run, 1 skipped"
        " · tests 3 passed, 1 failed · security 1 high"
    )


def test_failing_by_stage_names_each_stages_failing_checks() -> None:
    stages = [
        StageRecord(run_id="r", index=0, team="backend-engineering", checks={"failing": ["python-syntax", "ruff"]}),
        StageRecord(run_id="r", index=1, team="qa-engineering", checks={"failing": ["pytest"]}),
        StageRecord(run_id="r", index=2, team="documentation", checks={"failing": []}),
        StageRecord(run_id="r", index=3, team="business-analysis"),
    ]
    assert failing_by_stage(stages) == "python-syntax, ruff in backend-engineering; pytest in qa-engineering"
