"""A discussion's outcome as data: the summary's schema (answered by the scripted model as any model
constrained by it would), the fallback when no model summarises, what memory keeps, what is audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from memory.base import SHARED_BANK, MemoryKind
from routing.base import ChatRequest, Message
from routing.scripted import ScriptedModel
from teams.groupchat.base import ChatEntry, GroupChatOptions, GroupChatSession, GroupChatSummary, SessionStatus
from teams.groupchat.outcome import (
    _Answer,
    ended_entry,
    fallback_summary,
    memories,
    summary_schema,
    transcript_text,
)

A, B = "solution-architecture", "security-engineering"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def session() -> GroupChatSession:
    return GroupChatSession(
        id="gc-20260101-000000-00000001", topic="Ship on Friday?", teams=[A, B], options=GroupChatOptions(),
        status=SessionStatus.RUNNING, created_by="ana", created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def entries() -> list[ChatEntry]:
    lines = [("topic", "ana", "Ship on Friday?"), ("team", A, "Yes, behind a flag."), ("operator", "bo", "Legal?"),
             ("team", B, "Only after the review. " * 300), ("team", A, "Then Monday.")]  # fmt: skip
    return [ChatEntry(session_id="s", seq=i, kind=k, source=s, text=t, created_at=NOW)  # type: ignore[arg-type]
            for i, (k, s, t) in enumerate(lines)]  # fmt: skip


def test_the_summary_schema_is_flat_bounded_and_answerable() -> None:
    schema = summary_schema([A, B])
    assert "$ref" not in json.dumps(schema) and schema["additionalProperties"] is False
    assert schema["properties"]["positions"]["items"]["properties"]["team"]["enum"] == [A, B]
    request = ChatRequest(alias="factory/cheap", messages=[Message(role="user", content="x")], json_schema=schema,
                          purpose="groupchat_summary")  # fmt: skip
    answer = _Answer.model_validate_json(ScriptedModel().answer(request).text)
    assert answer.decisions and answer.positions[0].team == A


def test_without_a_model_summary_each_teams_last_message_stands_for_its_position() -> None:
    summary = fallback_summary(session(), entries(), "no deployment answered")
    assert summary.source == "transcript" and "no deployment answered" in summary.overview
    assert [(p.team, p.argued) for p in summary.positions] == [(A, "Then Monday."), (B, summary.positions[1].argued)]
    assert len(summary.positions[1].argued) <= 400


def test_transcript_and_summary_go_to_each_teams_bank_and_the_shared_world() -> None:
    summary = GroupChatSummary(overview="Monday, after the review.", decisions=["Ship Monday"])
    items = memories(session(), entries(), summary)
    transcript = [i for i in items if i.kind is MemoryKind.TRANSCRIPT]
    decisions = [i for i in items if i.kind is MemoryKind.DECISION]
    assert {i.bank for i in transcript} == {i.bank for i in decisions} == {A, B, SHARED_BANK}
    assert len(transcript) == 3 * 3  # 4,000-character chunks: B's long message is cut in two
    assert all(i.run_id == session().id and i.metadata["session_id"] == session().id for i in items)
    assert "".join(i.text for i in transcript if i.bank == A).replace("\n\n", "") == transcript_text(entries()).replace(
        "\n\n", ""
    )
    assert "Ship Monday" in decisions[0].text and "[operator bo]: Legal?" in transcript[0].text


def test_the_audit_entry_holds_the_transcripts_hash_and_the_summary() -> None:
    summary = GroupChatSummary(overview="o")
    entry = ended_entry(session(), entries(), summary, "consensus")
    assert entry["stop_reason"] == "consensus" and entry["entries"] == 5 and entry["team_messages"] == 3
    assert entry != ended_entry(session(), entries()[:-1], summary, "consensus")  # another transcript, another hash
    assert len(entry["transcript_sha256"]) == 64 and entry["summary"]["overview"] == "o"
