"""What the *Group chat* profile shows (``chat.groupchat_render``), rendered as a browser would be given
it (CommonMark, raw HTML on: escaping alone must keep team and operator text inert)."""

from __future__ import annotations

from datetime import UTC, datetime

from markdown_it import MarkdownIt

from chat.groupchat_render import ending, headline, listing, other_line, reason_words, seeded, team_line
from teams.groupchat.base import (
    ChatEntry,
    GroupChatOptions,
    GroupChatSession,
    GroupChatSummary,
    Position,
    SessionStatus,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOSTILE = '<script>x()</script> [link](javascript:alert(1)) **bold** <img src=x onerror="y()">'
MD = MarkdownIt("commonmark", {"html": True})


def html(markdown: str) -> str:
    return MD.render(markdown)


def inert(markdown: str) -> None:
    out = html(markdown)
    assert "<script" not in out and "<img" not in out and "href=" not in out


def session(**changes: object) -> GroupChatSession:
    base = GroupChatSession(
        id="gc-20261205-120000-0123abcd", topic="Monolith or services?",
        teams=["solution-architecture", "qa-engineering"], options=GroupChatOptions(max_messages=6),
        status=SessionStatus.RUNNING, created_by="ana", created_at=NOW, updated_at=NOW, team_messages=2,
    )  # fmt: skip
    return base.model_copy(update=changes)


def entry(**changes: object) -> ChatEntry:
    meta = {"selected_by": "round_robin", "selector_answer": "nobody"}
    base = ChatEntry(session_id="gc-1", seq=3, kind="team", source="qa-engineering", text="Test it end to end.",
                     tokens=1234, created_at=NOW, meta=meta)  # fmt: skip
    return base.model_copy(update=changes)


def test_the_headline_says_the_state_and_what_the_operator_can_do() -> None:
    running = html(headline(session()))
    assert "<strong>Running</strong> · 2 of 6 team messages" in running and "interject" in running
    assert "watching" in headline(session(), viewer=True) and "interject:" not in headline(session(), viewer=True)
    assert "Stopping</strong> (asked by val)" in html(headline(session(stop_requested_by="val")))
    concluding = headline(session(stop_reason="consensus", stop_requested_by=None))
    assert "Concluding" in concluding and "declared CONSENSUS" in concluding
    assert "Ended" in headline(session(status=SessionStatus.ENDED, stop_reason="max_messages"))
    failed = headline(session(status=SessionStatus.FAILED, error="model down <b>x</b>"))
    assert (
        "Failed" in failed
        and "Resume" in failed
        and "Resume" not in headline(session(status=SessionStatus.FAILED), viewer=True)
    )
    inert(headline(session(status=SessionStatus.FAILED, error=HOSTILE, teams=[HOSTILE, "qa-engineering"])))


def test_every_stop_reason_reads_as_a_sentence() -> None:
    words = {r: reason_words(session(stop_reason=r, stop_requested_by="ana"))
             for r in ("max_messages", "consensus", "timeout", "token_budget", "stopped")}  # fmt: skip
    assert words == {
        "max_messages": "it reached its message limit",
        "consensus": "a team declared CONSENSUS",
        "timeout": "it ran out of time (900 s)",
        "token_budget": "it spent its token budget (60,000 tokens)",
        "stopped": "ana stopped it",
    }


def test_a_team_line_is_labelled_streamed_then_final_or_cut() -> None:
    writing = team_line("qa-engineering", "Test it", number=3)
    assert writing.startswith("**qa\\-engineering** · QA Engineering · message 3 · *writing*")
    final = html(team_line("qa-engineering", "Test it end to end.", number=3, entry=entry()))
    assert "1,234 tokens · next in turn" in final and "writing" not in final
    assert "cut off: the discussion ended" in team_line("qa-engineering", "Te", number=3, cut="the discussion ended")
    assert team_line("qa-engineering", "  ", number=1).endswith("…")  # nothing arrived yet
    hostile = team_line("qa-engineering", HOSTILE, number=1, entry=entry(text=HOSTILE))
    inert(hostile)
    assert "**bold**" in MD.render(hostile).replace("<p>", "").replace("</p>", "")  # shown as written


def test_lines_from_elsewhere_name_who_wrote_them() -> None:
    assert html(other_line(entry(kind="operator", source="val", text="Mind GDPR"))).startswith(
        "<p><strong>val</strong> · operator, interjecting</p>"
    )
    assert "Topic</strong> (set by ana)" in html(other_line(entry(kind="topic", source="ana", text="Queues?")))
    inert(other_line(entry(kind="operator", source=HOSTILE, text=HOSTILE)))


def test_the_end_shows_the_summary_and_what_can_follow() -> None:
    summary = GroupChatSummary(
        overview="Start with one service.", decisions=["One service", HOSTILE], open_questions=[],
        positions=[Position(team="qa-engineering", argued="Simple tests.")],
    )  # fmt: skip
    ended = session(status=SessionStatus.ENDED, stop_reason="stopped", stop_requested_by="ana", summary=summary)
    out = html(ending(ended))
    assert "ended</strong> after 2 team messages: ana stopped it." in out
    assert "<li>One service</li>" in out and "<li>(none)</li>" in out
    assert "<strong>qa-engineering</strong>: Simple tests." in out and "Run this as a requirement" in out
    inert(ending(ended))
    assert "Run this as a requirement" not in ending(ended, viewer=True)
    started = ending(ended.model_copy(update={"run_ids": ["run-20261205-120500-00000001"]}))
    assert "Started from this summary: `run-20261205-120500-00000001`" in started and "Run this" not in started
    fallback = ended.model_copy(update={"summary": summary.model_copy(update={"source": "transcript"})})
    assert "summary model failed" in ending(fallback)


def test_a_seeded_run_says_where_to_follow_it_and_the_listing_lists() -> None:
    assert "shown below" in seeded("run-1", "ana", here=True)
    assert "/watch run-1" in seeded("run-1", "ana", here=False)
    assert "No group chats yet" in listing([])
    listed = listing([session(), session(id="gc-2", status=SessionStatus.ENDED, stop_reason="consensus")])
    assert "`gc-20261205-120000-0123abcd` · **running**" in listed and "**ended** (consensus)" in listed
