"""The chat shows what the factory checked (issue 19), in a real browser on the real services and the
real sandbox (Debian's bubblewrap): each stage's check figures, a revision the checks asked for, the
run's verification line, and an escalation card that says which check failed where, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from teams.roster import team
from tests.debian import ensure_debian
from tests.e2e.conftest import Chat, login, send

pytestmark = [pytest.mark.integration, pytest.mark.env({"FACTORY_VERIFY": "true"})]

REQ = "Build a link shortener service with an HTTP API: create links and redirect."
DELIVERY = Path(__file__).resolve().parents[1] / "data" / "delivery"
GOOD = {
    "backend/app.py": (DELIVERY / "app.py").read_text(),
    "qa/test_app.py": (DELIVERY / "test_app.py").read_text(),
}
# A syntax error whose line (quoted by the finding) is hostile markup: it must show as text.
HOSTILE_LINE = 'shown = "<img src=x onerror=window.__pwned=1>" +'
BROKEN = {"backend/app.py": GOOD["backend/app.py"] + f"\n\n{HOSTILE_LINE}\n"}
BROKEN_AT = BROKEN["backend/app.py"].splitlines().index(HOSTILE_LINE) + 1


def result(slug: str, files: dict[str, str]) -> dict[str, Any]:
    """A COMPLETE result of ``slug`` with its pinned deliverables, ``files`` where given."""
    artifacts = [
        {"name": d.name, "kind": d.kind, "content": files.get(d.name, f"# {d.name}\n\n{d.description}\n")}
        for d in team(slug).produces
    ]
    return {
        "status": "COMPLETE", "reasoning": f"{slug} delivers.", "blockers": [], "assumptions_made": [],
        "verified_facts": [], "clarification_needed": None, "artifacts": artifacts, "confidence": 0.9,
    }  # fmt: skip


@pytest.fixture(autouse=True)
def sandbox() -> str:
    """Produced code runs only in bubblewrap: installed (as root) before the chat starts."""
    return ensure_debian("bwrap", "bubblewrap")


def _inert(page: Any) -> None:
    """Nothing a finding quoted ran or became live markup."""
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[onerror]").count() == 0


def _open(page: Any, title: str) -> None:
    """Expand the stage step titled ``title`` (steps are collapsed: the title carries the status)."""
    page.get_by_text(title).first.click()


# The chat's own scrolling list is scrolled, and nothing sideways (a row of files wider than the
# chat lets a click's scrolling shift the whole page left, under the sidebar).
SCROLL_TO = """e => {
  for (let a = e.parentElement; a; a = a.parentElement) a.scrollLeft = 0;
  let box = e.parentElement;
  while (box && !(box.scrollHeight > box.clientHeight && /auto|scroll/.test(getComputedStyle(box).overflowY)))
    box = box.parentElement;
  if (box) box.scrollTop += e.getBoundingClientRect().top - box.getBoundingClientRect().top - 16;
}"""


def _top(locator: Any) -> None:
    """Scroll the chat so that ``locator`` is at the top of what the screenshot shows."""
    locator.evaluate(SCROLL_TO)


@pytest.mark.script(
    {"teams": {
        "backend-engineering": [result("backend-engineering", BROKEN), result("backend-engineering", GOOD)],
        "qa-engineering": [result("qa-engineering", GOOD)],
    }}
)  # fmt: skip
def test_the_chat_shows_each_stages_checks_and_a_revision_they_asked_for(chat: Chat, page: Any) -> None:
    login(page, chat, "ana")
    send(page, REQ)
    page.get_by_text("Run complete.").wait_for(timeout=180_000)
    chat.screenshot(page, "01-run-complete")
    for title in ("2. solution-architecture · complete", "3. backend-engineering · complete",
                  "4. qa-engineering · complete"):  # fmt: skip
        _open(page, title)
    page.get_by_text("1 check skipped").first.wait_for(timeout=15_000)  # no diagram to check
    backend = page.get_by_text("checks 5/5 passed").first
    backend.wait_for(timeout=15_000)
    assert "2 executions" in backend.inner_text()  # the first answer did not parse: one revision
    qa = page.get_by_text("checks 3/3 passed · tests 3 passed, 0 failed").first
    qa.wait_for(timeout=15_000)
    assert "executions" not in qa.inner_text()
    _top(page.get_by_text("2. solution-architecture · complete").first)
    chat.screenshot(page, "02-stages-with-their-checks")
    verification = page.get_by_text("Verification:").first
    line = verification.inner_text()
    assert "checks 9/10 passed, 1 skipped · tests 3 passed, 0 failed" in line, line
    assert "failed (" not in line, line
    _top(page.get_by_text("Run complete.").first)
    chat.screenshot(page, "03-verification-line")
    _inert(page)


@pytest.mark.env({"FACTORY_CHECK_REVISIONS": "0"})
@pytest.mark.script(
    {"teams": {
        "backend-engineering": [result("backend-engineering", BROKEN)] * 3,
        "qa-engineering": [result("qa-engineering", GOOD)],
    }}
)  # fmt: skip
def test_checks_that_keep_failing_reach_the_operator_with_readable_findings(chat: Chat, page: Any) -> None:
    login(page, chat, "ana")
    send(page, REQ)
    # The backend's own checks fail and no revision is allowed: the operator sees what failed, where.
    page.get_by_text("Approval needed").first.wait_for(timeout=180_000)
    found = page.get_by_text("What the checks found").first
    found.wait_for()
    syntax = page.locator("li", has_text=f"python-syntax · backend/app.py line {BROKEN_AT}").first
    assert HOSTILE_LINE in syntax.inner_text()  # the quoted line, as text
    assert page.get_by_text("Why it stopped").count() == 0  # the question says it; said once
    _inert(page)
    _top(page.get_by_text("Approval needed").first)
    chat.screenshot(page, "01-backend-card")
    page.get_by_role("button", name="Approve").first.click()
    decided = page.get_by_text("approved by ana").first
    decided.wait_for(timeout=30_000)
    _top(decided)
    chat.screenshot(page, "02-backend-approved")
    # QA's tests then fail in the backend's file: a card naming the team whose file it is.
    whose = page.get_by_text("What the checks found in files of backend-engineering").first
    whose.wait_for(timeout=180_000)
    _inert(page)
    assert "backend/app.py line" in page.locator("li", has_text="pytest").last.inner_text()
    _top(page.get_by_text("Approval needed").nth(1))
    chat.screenshot(page, "03-qa-card-names-backend")
    page.get_by_role("button", name="Approve").first.click()
    page.get_by_text("Run complete.").wait_for(timeout=120_000)
    line = page.get_by_text("Verification:").first.inner_text()
    assert "failed (python-syntax, python-import, ruff in backend-engineering; pytest in qa-engineering)" in line
    _top(page.get_by_text("Run complete.").first)
    chat.screenshot(page, "04-run-complete")
    _inert(page)
