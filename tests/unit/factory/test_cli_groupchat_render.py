"""What `factory groupchat` prints, from the models alone: labelled transcript lines, the summary,
the hints for each status, and the live watcher (chunks streamed on a terminal, whole messages
otherwise, a stop noted once the line being streamed ends, a cut message marked)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from factory.cli_groupchat_render import Watcher, entry_line, hint_lines, status_line, summary_lines
from observability.base import Event
from teams.groupchat import ChatEntry, GroupChatOptions, GroupChatSession, GroupChatSummary, Position, SessionStatus

NOW = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)
SID = "gc-20261205-220000-0123abcd"


def session(**changes: Any) -> GroupChatSession:
    base = GroupChatSession(id=SID, topic="Ship?", teams=["a", "b"], options=GroupChatOptions(),
                            status=SessionStatus.RUNNING, created_by="ana", created_at=NOW, updated_at=NOW)  # fmt: skip
    return base.model_copy(update=changes)


def event(name: str, /, **data: Any) -> Event:
    return Event(type=f"groupchat.{name}", run_id=SID, data=data, at=NOW)


def test_transcript_lines_say_who_spoke() -> None:
    line = ChatEntry(session_id=SID, seq=2, kind="operator", source="bo", text="Hold on", created_at=NOW)
    assert entry_line(line) == "[operator bo] Hold on"
    assert entry_line({"kind": "team", "source": "a", "text": "Yes"}) == "[a] Yes"
    assert entry_line({"kind": "topic", "source": "ana", "text": "Ship?"}) == "[topic, from ana] Ship?"


def test_the_summary_and_what_to_do_next() -> None:
    summary = GroupChatSummary(overview="Later.", decisions=["Monday"], positions=[Position(team="a", argued="wait")])
    ended = session(status=SessionStatus.ENDED, stop_reason="consensus", summary=summary, team_messages=3)
    assert summary_lines(ended) == ["Summary", "  Later.", "Decisions:", "  - Monday", "Open questions: none",
                                    "Positions:", "  - a: wait"]  # fmt: skip
    assert status_line(ended).startswith(f"group chat {SID}: ended (consensus), 3 team messages")
    assert f"factory groupchat run {SID} [--detach]" in hint_lines(ended)[0]
    assert hint_lines(session(status=SessionStatus.FAILED, error="model down"))[0] == "error: model down"
    assert f"factory groupchat resume {SID}" in hint_lines(session())[1]
    assert summary_lines(session()) == ["(no summary yet)"]


def test_on_a_terminal_a_message_streams_and_a_stop_waits_for_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    watch = Watcher(SID, err=False, stream=True)
    watch(event("chunk", team="a", seq=1, text="Ship "))
    watch(event("stop_requested", by="ana"))
    watch(event("chunk", team="a", seq=1, text="Monday."))
    watch(event("message", seq=1, kind="team", source="a", text="Ship Monday."))
    watch(event("chunk", team="b", seq=2, text="No"))
    watch(event("ended", reason="stopped"))
    watch(Event(type="groupchat.message", run_id="gc-other", data={}, at=NOW))  # another session's: ignored
    assert capsys.readouterr().out == (
        "[a] Ship Monday.\n(stop asked by ana: the discussion ends, then the summary is written)\n[b] No … (cut off)\n"
    )


def test_elsewhere_whole_messages_each_once(capsys: pytest.CaptureFixture[str]) -> None:
    watch = Watcher(SID, err=False, stream=False, after_seq=1)
    watch(event("chunk", team="a", seq=2, text="Ship"))
    watch(event("message", seq=1, kind="team", source="a", text="already printed"))
    watch(event("message", seq=2, kind="team", source="a", text="Ship \x1b[2Jnow."))
    watch(event("message", seq=2, kind="team", source="a", text="Ship now."))
    watch.entry(ChatEntry(session_id=SID, seq=3, kind="operator", source="bo", text="Why?", created_at=NOW))
    assert capsys.readouterr().out == "[a] Ship \\x1b[2Jnow.\n[operator bo] Why?\n"  # control characters shown
