"""The *Group chat* profile in a real browser, on `factory up` (chat and worker) with the scripted model:
an operator picks teams and a topic, watches each team's message stream in under its name,
interjects (the next speaker hears it), stops, reads the summary and starts a run from it; a closed
tab ends nothing; a viewer watches but cannot join in; bad input is said plainly."""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Chat, login, open_profile, send

pytestmark = pytest.mark.integration

ARCH, SEC, QA = "solution-architecture", "security-engineering", "qa-engineering"
TOPIC = "Should the URL shortener be one service or several? Weigh delivery speed, operability and security."
INTERJECTION = "Keep abuse in scope: rate-limit link creation per client."


def said(team: str, n: int) -> str:
    return (
        f"{team} speaking, point {n}: we should keep one deployable service with clear modules, because a"
        " small team ships it faster and operates it with less effort; split it only when load demands."
    )


SUMMARY = {
    "overview": "The teams weighed one service against several and agreed to start with one.",
    "decisions": [
        "Start with one deployable service with clear module boundaries.",
        "Rate-limit link creation per client from day one.",
    ],  # fmt: skip
    "open_questions": ["At what load do we split the redirect path out?"],
    "positions": [
        {"team": ARCH, "argued": "One service first; split on measured load."},
        {"team": SEC, "argued": "Abuse controls before scale: rate limits and link scanning."},
        {"team": QA, "argued": "One service keeps the end-to-end tests simple."},
    ],
}
SCRIPT = {
    "latency_s": 2.5,  # each message streams in over 2.5 s: the discussion is still going when we act
    "purposes": {"groupchat_select": [SEC, QA, ARCH, SEC, QA, ARCH], "groupchat_summary": [SUMMARY]},
    "teams": {t: [said(t, n) for n in range(1, 4)] for t in (ARCH, SEC, QA)},
}


def message(page: Any, n: int) -> Any:
    """The n-th team message of the discussion (its label), wherever it is."""
    return page.get_by_text(re.compile(rf"· message {n}\b")).first


def whole(page: Any, team: str, n: int) -> Any:
    """A team's message once all of it is shown."""
    return page.get_by_text(said(team, n), exact=True).first


def before(upper: Any, lower: Any) -> bool:
    """Whether ``upper`` comes before ``lower`` in the page (document order: what a reader sees first)."""
    return bool(upper.evaluate("(a, b) => !!(a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING)",
                               lower.element_handle()))  # fmt: skip


def shot(chat: Chat, page: Any, name: str, top: Any) -> None:
    """A screenshot with ``top`` at the top of the chat's scrolled view (the part a step is about)."""
    top.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    chat.screenshot(page, name)


def session_id(pg_url: str) -> str:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT id FROM groupchat_sessions ORDER BY created_at DESC LIMIT 1").fetchone()
    assert row is not None, "no group chat was stored"
    return str(row[0])


def pick_teams(page: Any, drop: int, add: list[str]) -> None:
    """In the settings panel's team box, by keyboard as a person can: Backspace drops the last ``drop``
    teams chosen, then each of ``add`` is typed (the list narrows to it) and taken with Enter."""
    page.click("#chat-settings-open-modal")
    box = page.locator("[role=dialog] [cmdk-input]").first
    box.click()
    for _ in range(drop):
        page.keyboard.press("Backspace")
    for team in add:
        page.keyboard.type(team)
        page.get_by_role("option", name=team, exact=True).wait_for()
        page.keyboard.press("Enter")
        page.locator("[role=dialog]").get_by_text(team, exact=True).wait_for()


def interjections(pg_url: str, session: str) -> list[tuple[str, str, int | None]]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT by, text, consumed_seq FROM groupchat_interjections WHERE session_id = %s ORDER BY id", (session,)
        ).fetchall()
    return [(str(b), str(t), c) for b, t, c in rows]


def transcript(pg_url: str, session: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT seq, kind, source FROM groupchat_messages WHERE session_id = %s ORDER BY seq", (session,)
        ).fetchall()
    return [(int(q), str(k), str(s)) for q, k, s in rows]


@pytest.mark.script(SCRIPT)
def test_operator_runs_a_group_chat_interjects_stops_and_seeds_a_run(chat: Chat, page: Any, pg_url: str) -> None:
    login(page, chat, "ana")
    open_profile(page, "Group chat")
    page.get_by_text("Monolith or services?").wait_for()  # the profile's starters
    chat.screenshot(page, "01-welcome")
    pick_teams(page, drop=2, add=[SEC, QA])  # solution-architecture stays; backend-engineering goes
    chat.screenshot(page, "02-teams-picked")
    page.get_by_role("button", name="Confirm").click()

    send(page, TOPIC)
    page.get_by_text("Running").first.wait_for(timeout=30_000)
    first = message(page, 1)
    first.wait_for(timeout=30_000)  # the selector chose security-engineering; its message streams in
    assert first.inner_text().startswith(SEC)
    page.get_by_text("writing").first.wait_for()
    early = page.get_by_text(re.compile(rf"^{SEC} speaking")).first.inner_text()
    chat.screenshot(page, "03-streaming")
    send(page, INTERJECTION)  # while security-engineering is still writing
    whole(page, SEC, 1).wait_for(timeout=30_000)
    assert len(early) < len(said(SEC, 1))  # the message was shown before it was whole
    second = message(page, 2)
    second.wait_for(timeout=30_000)
    assert second.inner_text().startswith(QA)
    whole(page, QA, 1).wait_for(timeout=30_000)
    assert before(page.get_by_text(INTERJECTION).first, second)  # the next speaker came after it
    session = session_id(pg_url)
    [(by, text, consumed)] = interjections(pg_url, session)
    lines = transcript(pg_url, session)
    assert (by, text) == ("ana", INTERJECTION) and consumed is not None
    assert (consumed, "operator", "ana") in lines and (consumed + 1, "team", QA) in lines  # heard by the next turn
    shot(chat, page, "04-interjected", first)

    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Discussion ended", exact=True).wait_for(timeout=60_000)
    page.get_by_text("ana stopped it").first.wait_for()
    for part in ("Decisions", "Open questions", "Who argued what", SUMMARY["decisions"][1]):
        page.get_by_text(part).first.wait_for()
    assert page.get_by_role("button", name="Stop").count() == 0  # nothing left to stop
    shot(chat, page, "05-summary", page.get_by_text("Discussion ended", exact=True).first)

    page.get_by_role("button", name="Run this as a requirement").click()
    page.get_by_text(re.compile(r"Run run-\d{8}-\d{6}-[0-9a-f]{8} started")).wait_for(timeout=30_000)
    page.get_by_text("1. business-analysis").first.wait_for(timeout=60_000)  # the run, shown in this thread
    shot(chat, page, "06-run-started", page.get_by_text("Who argued what").first)
    with psycopg.connect(pg_url) as conn:
        (requirement,) = conn.execute("SELECT requirement FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
    assert session in requirement and SUMMARY["decisions"][0] in requirement
    assert "no worker took up group chat" not in chat.log.read_text()  # `factory up`'s worker drove it


def wait_db(pg_url: str, query: str, args: tuple[Any, ...], until: Any, timeout_s: float = 60.0) -> Any:
    """Poll ``query`` until ``until(row)`` holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(query, args).fetchone()
        if row is not None and until(row):
            return row
        time.sleep(0.25)
    raise AssertionError(f"not reached within {timeout_s} s: {query} {args}")


def set_max_messages(page: Any, n: int) -> None:
    page.click("#chat-settings-open-modal")
    page.locator('[id="gc_max_messages"]').fill(str(n))
    page.get_by_role("button", name="Confirm").click()


@pytest.mark.script({**SCRIPT, "latency_s": 1.5})
def test_a_closed_tab_ends_nothing_and_the_reopened_thread_follows_again(
    chat: Chat, page: Any, browser: Any, pg_url: str
) -> None:
    login(page, chat, "ana")
    open_profile(page, "Group chat")
    set_max_messages(page, 4)
    send(page, TOPIC)
    whole(page, SEC, 1).wait_for(timeout=30_000)
    session = session_id(pg_url)
    page.close()  # mid-discussion: it goes on without any page
    status = "SELECT status, team_messages FROM groupchat_sessions WHERE id = %s"
    wait_db(pg_url, status, (session,), lambda row: row[1] >= 2)
    again = browser.new_page(viewport={"width": 1280, "height": 1000})
    login(again, chat, "ana")
    again.get_by_text(TOPIC).first.click()  # the thread, in the history sidebar
    message(again, 2).wait_for(timeout=30_000)  # written while no page was open
    again.get_by_text("Discussion ended", exact=True).wait_for(timeout=60_000)  # followed live to the end
    again.get_by_text("after 4 team messages: it reached its message limit").first.wait_for()
    for n in range(1, 5):
        assert again.get_by_text(re.compile(rf"· message {n}\b")).count() == 1  # each once, none lost or doubled
    assert again.get_by_text(TOPIC).count() >= 1 and again.get_by_text("Group chat gc-").count() <= 1
    shot(chat, again, "reopened-thread", message(again, 1))
    (ended, count) = wait_db(pg_url, status, (session,), lambda row: row[0] == "ended")
    assert count == 4


@pytest.mark.script({**SCRIPT, "latency_s": 1.5})
def test_a_viewer_watches_a_group_chat_but_cannot_join_in(chat: Chat, page: Any, browser: Any, pg_url: str) -> None:
    operator = browser.new_page(viewport={"width": 1280, "height": 1000})
    login(operator, chat, "ana")
    open_profile(operator, "Group chat")
    send(operator, TOPIC)
    message(operator, 1).wait_for(timeout=30_000)
    session = session_id(pg_url)

    sent: list[str] = []  # what the viewer's page sends: its session id is in there
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))))
    page.on("request", lambda r: sent.append(r.post_data or ""))
    login(page, chat, "val")
    open_profile(page, "Group chat")
    send(page, "/groupchats")
    page.get_by_role("button", name=f"Watch {session}").click()
    page.get_by_text("You are watching").first.wait_for(timeout=30_000)
    message(page, 1).wait_for(timeout=30_000)
    message(page, 2).wait_for(timeout=30_000)  # followed live
    page.get_by_text(re.compile(r"tokens · ")).nth(1).wait_for(timeout=30_000)  # message 2 is whole
    shot(chat, page, "viewer-watching", page.get_by_text("You are watching").first)
    assert page.get_by_role("button", name="Stop").count() == 0  # a viewer is offered no stop
    send(page, "Let me in.")
    page.get_by_text("val is a viewer and cannot interject in a group chat").wait_for(timeout=15_000)
    # A stop sent straight to the server, with the viewer's own session and cookie: refused there.
    found = [re.search(r'"session_?[iI]d"\s*:\s*"([0-9a-f-]{36})"', text) for text in sent]
    viewer_session = [match.group(1) for match in found if match][-1]  # its session in this profile
    action = {"name": "groupchat_stop", "payload": {"id": session}, "id": "x", "label": "Stop"}
    response = page.request.post(chat.url + "/project/action", data={"sessionId": viewer_session, "action": action})
    assert response.status == 200, response.text()
    page.get_by_text("val is a viewer and cannot stop a group chat").wait_for(timeout=15_000)
    chat.screenshot(page, "viewer-refused")
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT stop_requested_by FROM groupchat_sessions WHERE id = %s", (session,)).fetchone()
        (queued,) = conn.execute(
            "SELECT count(*) FROM groupchat_interjections WHERE session_id = %s", (session,)
        ).fetchone()
    assert row == (None,) and queued == 0  # nothing the viewer sent reached the session
    operator.get_by_role("button", name="Stop").click()  # the operator can
    operator.get_by_text("Discussion ended", exact=True).wait_for(timeout=60_000)
    page.get_by_text("Discussion ended", exact=True).wait_for(timeout=60_000)  # and the viewer sees the end
    assert page.get_by_role("button", name="Run this as a requirement").count() == 0


@pytest.mark.script({**SCRIPT, "latency_s": 3.0})  # the summary takes 3 s: a message typed meanwhile is too late
def test_bad_input_is_said_plainly_and_nothing_typed_is_lost(chat: Chat, page: Any, pg_url: str) -> None:
    login(page, chat, "ana")
    open_profile(page, "Group chat")
    pick_teams(page, drop=2, add=[])  # only solution-architecture is left
    page.get_by_role("button", name="Confirm").click()
    send(page, TOPIC)
    page.get_by_text("No discussion started: a group chat needs 2 to 8 teams; 1 given").wait_for(timeout=30_000)
    shot(chat, page, "one-team", page.get_by_text(TOPIC).first)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM groupchat_sessions").fetchone() == (0,)
    send(page, "/watch gc-20990101-000000-deadbeef")
    page.get_by_text("no group chat 'gc-20990101-000000-deadbeef'").wait_for(timeout=15_000)
    pick_teams(page, drop=0, add=[QA])
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("button", name="Start it with the teams now chosen").click()  # the topic, one click away
    page.get_by_text("Running").first.wait_for(timeout=30_000)
    message(page, 1).wait_for(timeout=30_000)
    with psycopg.connect(pg_url) as conn:
        (session, topic, teams) = conn.execute("SELECT id, topic, teams FROM groupchat_sessions").fetchone()
    assert topic == TOPIC and sorted(teams) == sorted([ARCH, QA])

    # Too late: the discussion ended (its summary is being written) before this message reached it.
    page.get_by_role("button", name="Stop").click()
    query = "SELECT stop_reason, status FROM groupchat_sessions WHERE id = %s"
    wait_db(pg_url, query, (session,), lambda row: row[0] is not None, timeout_s=30)
    late = "And one more thing: what about analytics?"
    send(page, late)
    page.get_by_text(f"group chat {session} has ended its discussion (stopped)").wait_for(timeout=15_000)
    page.get_by_text("Concluding").first.wait_for()
    page.get_by_text("Discussion ended", exact=True).wait_for(timeout=60_000)
    shot(chat, page, "too-late", page.get_by_text(late).first)
    page.get_by_role("button", name="Discuss it as a new topic").click()  # the late message, one click away
    page.get_by_text("Running").last.wait_for(timeout=30_000)
    with psycopg.connect(pg_url) as conn:
        topics = [r[0] for r in conn.execute("SELECT topic FROM groupchat_sessions ORDER BY created_at")]
        (queued,) = conn.execute("SELECT count(*) FROM groupchat_interjections").fetchone()
    assert topics == [TOPIC, late] and queued == 0
