"""The outcome of a discussion: a summary (decisions, open questions, who argued what) from one
model call with JSON-schema output, the transcript and the summary retained to memory (kinds
transcript and decision) in each participating team's bank and the shared world, and the audit
chain's entries. Each step is recorded as it completes, so a session resumed mid-outcome does
each step once: the summary is saved, retention is marked, audit appends are idempotent by key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from factory.errors import FactoryError
from memory.base import SHARED_BANK, MemoryKind, NewMemory
from memory.retention import chunks
from observability.text import must_be_storable
from routing.base import ChatRequest, Message
from teams.groupchat.base import ChatEntry, GroupChatSession, GroupChatSummary, Position, StopReason
from teams.groupchat.deps import GroupChatDeps
from teams.parsing import OutputProblem, json_object

log = logging.getLogger(__name__)

ITEM_CHARS = 400
MAX_ITEMS = 8
TRANSCRIPT_CHUNK_CHARS = 4000


def summary_schema(teams: Sequence[str]) -> dict[str, Any]:
    """Flat and bounded, so a grammar-constrained local model can follow it."""
    text = {"type": "string", "maxLength": ITEM_CHARS}
    listed = {"type": "array", "items": text, "maxItems": MAX_ITEMS}
    position = {
        "type": "object",
        "properties": {"team": {"type": "string", "enum": list(teams)}, "argued": text},
        "required": ["team", "argued"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "overview": {"type": "string", "maxLength": 800},
            "decisions": listed,
            "open_questions": listed,
            "positions": {"type": "array", "items": position, "maxItems": len(teams)},
        },
        "required": ["overview", "decisions", "open_questions", "positions"],
        "additionalProperties": False,
    }


_Text = Annotated[str, AfterValidator(must_be_storable)]


class _Answer(BaseModel):
    overview: _Text = Field(default="", max_length=1600)
    decisions: list[_Text] = Field(default_factory=list, max_length=MAX_ITEMS * 2)
    open_questions: list[_Text] = Field(default_factory=list, max_length=MAX_ITEMS * 2)
    positions: list[Position] = Field(default_factory=list, max_length=32)


def transcript_text(entries: Sequence[ChatEntry]) -> str:
    """The transcript as text: one ``[who]: what`` paragraph per line."""

    def who(e: ChatEntry) -> str:
        return {"topic": f"topic by {e.source}", "operator": f"operator {e.source}"}.get(e.kind, e.source)

    return "\n\n".join(f"[{who(e)}]: {e.text}" for e in entries)


def _bounded(entries: Sequence[ChatEntry], limit: int) -> str:
    """The topic and as much of the end of the discussion as fits ``limit`` characters."""
    head = transcript_text(entries[:1])
    tail = transcript_text(entries[1:])
    room = max(0, limit - len(head))
    return f"{head}\n\n{'…' if len(tail) > room else ''}{tail[-room:] if room else ''}"


def fallback_summary(session: GroupChatSession, entries: Sequence[ChatEntry], why: str) -> GroupChatSummary:
    """Built from the transcript itself (each team's last message) when the model fails."""
    last = {e.source: e.text for e in entries if e.kind == "team"}
    return GroupChatSummary(
        overview=f"No model summary ({why[:200]}); each team's last message stands for its position.",
        positions=[Position(team=t, argued=" ".join(last[t].split())[:ITEM_CHARS]) for t in session.teams if t in last],
        source="transcript",
    )


async def summarize(deps: GroupChatDeps, session: GroupChatSession, entries: Sequence[ChatEntry]) -> GroupChatSummary:
    """One ``summary_alias`` call; garbage, a failed call or a spent budget give the fallback."""
    prompt = (
        f"Teams {', '.join(session.teams)} discussed a topic with the operator. The transcript:\n\n"
        f"{_bounded(entries, deps.transcript_chars)}\n\n"
        "Summarise the discussion in JSON: an overview (a few sentences), the decisions it reached, the"
        " questions it left open, and what each team argued (one position per team). Short sentences."
    )
    request = ChatRequest(
        alias=session.options.summary_alias,
        messages=[
            Message(role="system", content="You write precise, neutral minutes of technical discussions."),
            Message(role="user", content=prompt),
        ],
        json_schema=summary_schema(session.teams),
        max_tokens=1200,
        temperature=0.1,
        run_id=session.id,
        purpose="groupchat_summary",
    )
    try:
        response = await deps.model.complete(request, timeout_s=deps.timeout_s)
        answer = _Answer.model_validate(json_object(response.text))
    except (OutputProblem, ValidationError, FactoryError, TimeoutError, OSError, ValueError) as exc:
        log.warning("group chat %s: the summary fell back to the transcript: %s", session.id, exc)
        return fallback_summary(session, entries, str(exc))
    return GroupChatSummary(
        overview=" ".join(answer.overview.split())[:1600],
        decisions=_clean(answer.decisions),
        open_questions=_clean(answer.open_questions),
        positions=[
            Position(team=p.team, argued=" ".join(p.argued.split())[:ITEM_CHARS])
            for p in answer.positions
            if p.team in session.teams
        ],
    )


def _clean(texts: Sequence[str]) -> list[str]:
    kept: list[str] = []
    for text in texts:
        text = " ".join(text.split())[:ITEM_CHARS]
        if text and text not in kept:
            kept.append(text)
    return kept[:MAX_ITEMS]


def memories(session: GroupChatSession, entries: Sequence[ChatEntry], summary: GroupChatSummary) -> list[NewMemory]:
    """The transcript (in chunks) and the summary, in each team's bank and the shared world."""
    meta = {"source": "group chat", "session_id": session.id, "teams": list(session.teams)}
    pieces = chunks(transcript_text(entries), TRANSCRIPT_CHUNK_CHARS)
    summary_text = f"Group chat on: {session.topic[:300]}\n\n{summary.as_text()}"[:20_000]
    items: list[NewMemory] = []
    for bank in [*session.teams, SHARED_BANK]:
        items += [
            NewMemory(
                bank=bank, kind=MemoryKind.TRANSCRIPT, text=piece, run_id=session.id, metadata={**meta, "chunk": number}
            )  # fmt: skip
            for number, piece in enumerate(pieces)
        ]
        items.append(
            NewMemory(bank=bank, kind=MemoryKind.DECISION, text=summary_text, run_id=session.id, metadata=meta)
        )
    return items


def ended_entry(
    session: GroupChatSession, entries: Sequence[ChatEntry], summary: GroupChatSummary, reason: StopReason
) -> dict[str, Any]:
    """The audit payload of a finished session: how it ended, the transcript's hash, the summary."""
    transcript = json.dumps([e.model_dump(mode="json", include={"seq", "kind", "source", "text"}) for e in entries])
    return {
        "stop_reason": reason,
        "stop_requested_by": session.stop_requested_by,
        "teams": list(session.teams),
        "entries": len(entries),
        "team_messages": sum(e.kind == "team" for e in entries),
        "transcript_sha256": hashlib.sha256(transcript.encode()).hexdigest(),
        "summary": summary.model_dump(mode="json"),
    }


async def conclude(deps: GroupChatDeps, session: GroupChatSession, lease: Any, reason: StopReason) -> None:
    """Summary, memory, audit — each once — for a session whose discussion ended with ``reason``."""
    entries = await deps.store.entries(session.id, limit=100_000)
    summary = session.summary
    if summary is None:
        summary = await summarize(deps, session, entries)
        await deps.store.save_summary(lease, summary)
    if deps.gateway is not None and not await deps.store.retained(session.id):
        try:
            await deps.gateway.retain(memories(session, entries, summary), dedupe=False)
            await deps.store.mark_retained(lease)
        except Exception as exc:  # memory is derived: the transcript and summary stay in the session
            log.warning("group chat %s: not retained to memory: %s", session.id, exc)
    heard = [
        (f"interjection-{e.meta['interjection']}", "groupchat.interjection",
         {"by": e.source, "text": e.text, "seq": e.seq})
        for e in entries if e.kind == "operator" and "interjection" in e.meta
    ]  # fmt: skip
    await deps.audit.append_many(
        session.id, [*heard, ("groupchat.ended", "groupchat.ended", ended_entry(session, entries, summary, reason))]
    )
