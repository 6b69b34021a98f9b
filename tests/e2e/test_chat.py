"""The chat in a real browser: an operator runs a requirement and decides in chat, a closed page
loses nothing, a viewer cannot decide (not even over the socket), hostile output stays inert."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Chat, login, open_profile, send, start_chat, stop_chat
from tests.integration.cli import factory, run_json

pytestmark = pytest.mark.integration

HOSTILE = (
    "<script>window.__pwned=1</script> see [the docs](javascript:window.__pwned=2)"
    ' <img src=x onerror="window.__pwned=3"> <a href="javascript:window.__pwned=4">here</a>'
)
BLOCKED = {
    "status": "BLOCKED",
    "reasoning": f"Cannot pick a datastore. {HOSTILE}",
    "blockers": ["Which datastore: PostgreSQL or SQLite? <b>unbolded</b>"],
    "confidence": 0.3,
}
REQ = "Build a tiny URL shortener with an HTTP API."


def _open_escalations(environ: dict[str, str]) -> list[dict[str, Any]]:
    proc = factory("hitl", "list", "--json", env=environ)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return list(data["items"] if isinstance(data, dict) else data)


def _inert(page: Any) -> None:
    """Nothing a model wrote ran or became a live link."""
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("[...document.scripts].some(s => s.textContent.includes('__pwned'))") is False
    assert page.locator('a[href^="javascript:"]').count() == 0
    assert page.locator("img[onerror]").count() == 0


@pytest.mark.script({"teams": {"backend-engineering": [BLOCKED]}})
def test_operator_runs_a_requirement_and_answers_an_escalation(chat: Chat, page: Any) -> None:
    login(page, chat, "ana")
    page.get_by_text("Try the sample requirement").wait_for()
    chat.screenshot(page, "01-first-screen")
    send(page, REQ)
    page.get_by_text("1. business-analysis · complete").wait_for(timeout=60_000)
    card = page.get_by_text("A team is blocked")
    card.wait_for(timeout=60_000)
    page.get_by_text("Which datastore: PostgreSQL or SQLite? <b>unbolded</b>").first.wait_for()
    _inert(page)
    chat.screenshot(page, "02-escalation-card")
    page.get_by_role("button", name="Answer").first.click()
    page.get_by_text("as your next message").wait_for()
    send(page, "Use PostgreSQL.")
    page.get_by_text("answered by ana").first.wait_for(timeout=30_000)
    page.get_by_text("Run complete.").wait_for(timeout=90_000)
    page.get_by_text("5. documentation · complete").first.wait_for()
    run_id = page.locator("text=/run-\\d{8}-\\d{6}-[0-9a-f]{8}/").first.inner_text().strip()
    page.get_by_text(".zip").first.wait_for(timeout=15_000)  # the bundle as a zip, beside its files (sent after)
    _inert(page)
    chat.screenshot(page, "03-run-complete")
    assert not _open_escalations(chat.env)
    assert run_id


ASK = {
    "status": "NEEDS_CLARIFICATION",
    "reasoning": "The datastore decides the schema.",
    "clarification_needed": {"target_team": "solution-architecture", "question": "Which database do we use?"},
    "confidence": 0.5,
}


@pytest.mark.script({"latency_s": 1.0})
def test_a_restart_of_the_chat_loses_no_run(chat: Chat, page: Any, browser: Any, pg_url: str, tmp_path: Path) -> None:
    login(page, chat, "ana")
    send(page, REQ)
    page.get_by_text("1. business-analysis").first.wait_for(timeout=60_000)
    os.kill(chat.proc.pid, signal.SIGKILL)  # the chat process dies mid-run; the run is not in it
    chat.proc.wait()
    (tmp_path / "second").mkdir()
    second = start_chat(chat.env, tmp_path / "second", chat.shots)
    try:
        again = browser.new_page(viewport={"width": 1280, "height": 1000})
        login(again, second, "ana")
        again.get_by_text(REQ).first.click()
        again.get_by_text("Run complete.").wait_for(timeout=90_000)
        chat.screenshot(again, "after-restart")
    finally:
        stop_chat(second.proc)
    assert not second.offsite
    with psycopg.connect(pg_url) as conn:
        (status,) = conn.execute("SELECT status FROM runs").fetchone()
        attempts = [r[0] for r in conn.execute("SELECT attempts FROM stages ORDER BY idx")]
    assert status == "complete" and attempts == [1] * 5  # one run, nothing executed twice


@pytest.mark.script({"latency_s": 1.0, "teams": {"backend-engineering": [ASK]}})
def test_closing_the_page_mid_run_loses_nothing(chat: Chat, page: Any, browser: Any, pg_url: str) -> None:
    login(page, chat, "ana")
    send(page, REQ)
    page.get_by_text("1. business-analysis").first.wait_for(timeout=60_000)
    page.close()  # mid-run: the run goes on without any page
    with psycopg.connect(pg_url) as conn:
        run_id = conn.execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    again = browser.new_page(viewport={"width": 1280, "height": 1000})
    login(again, chat, "ana")
    again.get_by_text(REQ).first.click()  # the thread, in the history sidebar
    again.get_by_text("Run complete.").wait_for(timeout=90_000)
    for n, team in enumerate(["business-analysis", "solution-architecture", "backend-engineering",
                              "qa-engineering", "documentation"], start=1):  # fmt: skip
        again.get_by_text(f"{n}. {team} · complete").first.wait_for()
    again.get_by_text(".zip").first.wait_for()  # the bundle's files come back with the thread
    again.get_by_text("3. backend-engineering · complete").first.click()  # its clarification, nested
    again.get_by_text("clarification: backend-engineering asked solution-architecture").first.wait_for()
    chat.screenshot(again, "reopened-thread")
    with psycopg.connect(pg_url) as conn:
        status = conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()[0]
        attempts = [r[0] for r in conn.execute("SELECT attempts FROM stages WHERE run_id = %s ORDER BY idx", (run_id,))]
    assert status == "complete" and attempts == [1, 1, 2, 1, 1]  # nothing run twice (backend asked once)


def test_a_viewer_watches_but_cannot_decide(chat: Chat, page: Any, browser: Any) -> None:
    operator = browser.new_page(viewport={"width": 1280, "height": 1000})
    login(operator, chat, "ana")
    sent: list[str] = []  # what the viewer's page sends: its session id is in there
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))))
    page.on("request", lambda r: sent.append(r.post_data or ""))
    login(page, chat, "val")
    page.get_by_text("viewer").first.wait_for()
    Path(chat.env["FACTORY_SCRIPTED_MODEL"]).write_text(json.dumps({"teams": {"backend-engineering": [BLOCKED]}}))
    outcome = factory("run", REQ, "--json", env=chat.env)  # from the CLI, while both are connected
    assert outcome.returncode == 3, outcome.stderr
    escalation = run_json(outcome)["escalations"][0]["id"]
    operator.get_by_text("New in run").first.wait_for(timeout=30_000)  # it reached the connected operator
    chat.screenshot(operator, "operator-sees-new-escalation")
    page.get_by_text("New in run").first.wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Defer").count() == 0  # a viewer is offered no decision
    send(page, f"/reject {escalation} not on my watch")
    page.get_by_text("cannot decide an escalation").first.wait_for(timeout=15_000)
    # A decision sent straight to the server, with the viewer's own session and cookie: refused there.
    found = (re.search(r'"session_?[iI]d"\s*:\s*"([0-9a-f-]{36})"', text) for text in sent)
    session = next(match.group(1) for match in found if match)
    action = {"name": "decide_approve", "payload": {"id": escalation, "version": 0}, "id": "x", "label": "Approve"}
    response = page.request.post(chat.url + "/project/action", data={"sessionId": session, "action": action})
    assert response.status == 200, response.text()
    page.get_by_text("cannot decide an escalation").nth(1).wait_for(timeout=15_000)
    _inert(page)
    chat.screenshot(page, "viewer-refused")
    waiting = _open_escalations(chat.env)
    assert [item["id"] for item in waiting] == [escalation]  # still open: nothing a viewer sent decided it


KEY = "sk-test-NEVER-SHOWN-4242424242"


def test_settings_change_the_next_run_and_never_show_a_key(chat: Chat, page: Any, pg_url: str) -> None:
    login(page, chat, "ana")
    page.click("#chat-settings-open-modal")
    page.locator('[id="confidence_floor"]').fill("0.95")  # every stage (scripted confidence 0.9) asks you
    page.locator('[id="budget_run_tokens"]').fill("lots")  # refused, with why; the rest still applies
    page.locator('[id="secret_name"]').fill("OPENAI")
    page.locator('[id="secret_value"]').fill(KEY)
    chat.screenshot(page, "01-settings-panel")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_text("confidence_floor = 0.95").wait_for(timeout=30_000)
    page.get_by_text("API key OPENAI stored").wait_for()
    page.get_by_text("budget_run_tokens").first.wait_for()
    chat.screenshot(page, "02-settings-applied")
    stored = factory("secrets", "list", "--json", env=chat.env)
    assert stored.returncode == 0 and "OPENAI" in stored.stdout and KEY not in stored.stdout
    send(page, REQ)
    page.get_by_text("Approval needed").first.wait_for(timeout=60_000)  # the new policy reached the run
    chat.screenshot(page, "03-policy-applied")
    assert KEY not in page.content()
    page.click("#chat-settings-open-modal")
    assert page.locator('[id="secret_value"]').input_value() == ""  # the panel holds no key
    assert page.locator('[id="confidence_floor"]').input_value() == "0.95"
    page.keyboard.press("Escape")
    page.reload()  # the session's settings are persisted with the thread: the key must not be
    page.wait_for_selector("#chat-input", timeout=30_000)
    with psycopg.connect(pg_url) as conn:
        for table in ("threads", "steps", "runs", "audit_entries", "policy_changes", "routing_changes"):
            query = f"SELECT count(*) FROM {table} WHERE {table}::text LIKE %s"
            (found,) = conn.execute(query, (f"%{KEY}%",)).fetchone()
            assert found == 0, f"the key is in {table}"
        (policy,) = conn.execute("SELECT policy FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
    assert policy["confidence_floor"] == 0.95


def _choose(page: Any, trigger: str, option: str) -> None:
    """Pick ``option`` of a select by keyboard (type-ahead, then Enter), as a person can. A mouse click
    on a long list is flaky: passing over its scroll arrow scrolls it under the pointer."""
    page.locator(trigger).click()
    page.get_by_role("option", name=option).wait_for()
    page.keyboard.type(option)
    page.keyboard.press("Enter")
    page.locator(trigger).filter(has_text=option).wait_for(timeout=10_000)


@pytest.mark.script({"latency_s": 2.0})
def test_team_chat_streams_and_remembers_and_project_qa_cites(chat: Chat, page: Any, pg_url: str) -> None:
    login(page, chat, "ana")
    open_profile(page, "Team chat")
    page.wait_for_selector("#chat-settings-open-modal", timeout=30_000)
    page.click("#chat-settings-open-modal")
    _choose(page, "#team", "qa-engineering")
    page.get_by_role("button", name="Confirm").click()
    send(page, "What do you test first, <b>and why</b>?")
    page.wait_for_function("() => document.body.innerText.includes('qa-engineering')", timeout=30_000)
    early = page.evaluate("() => document.body.innerText.length")
    page.get_by_text("kept in qa-engineering's memory").wait_for(timeout=60_000)
    late = page.evaluate("() => document.body.innerText.length")
    assert late > early  # the reply grew in the page while it was written
    _inert(page)
    chat.screenshot(page, "01-team-chat")
    with psycopg.connect(pg_url) as conn:
        (kept,) = conn.execute(
            "SELECT count(*) FROM memory_items WHERE bank = 'qa-engineering' AND kind = 'transcript'"
        ).fetchone()
    assert kept == 1
    open_profile(page, "Project Q&A")
    page.get_by_text("Project Q&A.").first.wait_for()  # its welcome screen
    send(page, "What does qa-engineering test first?")
    answer = page.get_by_text("Sources", exact=True).or_(page.get_by_text("(no sources found)"))
    answer.first.wait_for(timeout=60_000)
    page.get_by_text("What does qa-engineering test first?").first.wait_for()
    chat.screenshot(page, "02-project-qa")
