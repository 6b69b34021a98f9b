"""Contracts of group chat (DESIGN §2 E): a session's options, its record, its transcript lines and
its summary. Plain pydantic models: front doors render them, the store keeps them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from routing.base import Alias

MIN_TEAMS = 2
MAX_TEAMS = 8  # every team hears every message: the prompt grows with each one
MAX_TOPIC_CHARS = 8000
MAX_INTERJECTION_CHARS = 4000
#: Interjections taken before one turn; the rest wait for the next (every loop bounded).
INTERJECTIONS_PER_TURN = 10


class SessionStatus(StrEnum):
    RUNNING = "running"  # created, being driven, or waiting for a driver (``resume``)
    ENDED = "ended"  # a termination condition ended it; its summary and memory are kept
    FAILED = "failed"  # a turn failed (a model down, the lease lost); ``resume`` continues it


#: Why the discussion ended.
StopReason = Literal["max_messages", "consensus", "timeout", "token_budget", "stopped"]

EntryKind = Literal["topic", "operator", "team"]


class GroupChatOptions(BaseModel):
    """Limits of one session; every one bounds the discussion on its own."""

    model_config = ConfigDict(frozen=True)

    #: Team messages at most (the topic and the operator's interjections are not counted).
    max_messages: int = Field(default=12, ge=1, le=200)
    #: No team speaks more than this many times in a row (an operator's message breaks a row).
    max_consecutive: int = Field(default=1, ge=1, le=10)
    #: Seconds of discussion (time spent driving it; a session resumed later goes on counting).
    timeout_s: float = Field(default=900.0, gt=0, le=86_400)
    #: Tokens (in and out) of every model call of the session: speakers and selector.
    token_budget: int | None = Field(default=60_000, ge=1)
    #: A team message holding this word ends the session (never the topic or the operator's text).
    consensus_marker: str = Field(default="CONSENSUS", min_length=3, max_length=40, pattern=r"^[A-Za-z_]+$")
    #: The alias that picks the next speaker when several may speak.
    selector_alias: Alias = "factory/fast"
    #: The alias that writes the summary at the end.
    summary_alias: Alias = "factory/cheap"
    #: Tokens one team message may take.
    max_tokens_per_message: int = Field(default=600, ge=16, le=8192)


class Position(BaseModel):
    """What one team argued."""

    team: str
    argued: str


class GroupChatSummary(BaseModel):
    """The outcome of a discussion."""

    overview: str = ""
    decisions: list[str] = Field(default_factory=list)
    open_questions: list[str] = Field(default_factory=list)
    positions: list[Position] = Field(default_factory=list)
    #: "model" when a model wrote it; "transcript" when the model failed and it was built from the
    #: transcript itself (each team's last message), so an outcome always exists.
    source: Literal["model", "transcript"] = "model"

    def as_text(self) -> str:
        """The summary as plain text (memory, the requirement it may seed)."""
        parts = [self.overview.strip()] if self.overview.strip() else []
        if self.decisions:
            parts.append("Decisions:\n" + "\n".join(f"- {d}" for d in self.decisions))
        if self.open_questions:
            parts.append("Open questions:\n" + "\n".join(f"- {q}" for q in self.open_questions))
        if self.positions:
            parts.append("Positions:\n" + "\n".join(f"- {p.team}: {p.argued}" for p in self.positions))
        return "\n\n".join(parts)


class GroupChatSession(BaseModel):
    """One session as stored."""

    id: str
    topic: str
    teams: list[str]
    options: GroupChatOptions
    status: SessionStatus
    created_by: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    stop_reason: StopReason | None = None
    stop_requested_by: str | None = None
    error: str | None = None
    summary: GroupChatSummary | None = None
    #: Transcript lines stored (topic, operator and team messages), and team messages among them.
    entries: int = 0
    team_messages: int = 0
    #: Seconds spent driving the discussion so far (the timeout counts these).
    elapsed_s: float = 0.0
    #: Pipeline runs seeded from the summary.
    run_ids: list[str] = Field(default_factory=list)

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        return value if value is not None else {}


class ChatEntry(BaseModel):
    """One line of a session's transcript."""

    session_id: str
    seq: int  # 0, 1, 2 … in the order the discussion heard them
    kind: EntryKind
    source: str  # a team slug, or the operator's user name
    text: str
    tokens: int = 0  # the team message's model call, in and out
    created_at: datetime
    #: How the speaker was chosen (team messages): "selector", "round_robin" (the selector's answer
    #: was invalid or excluded, or it failed) or "only" (one team could speak); the selector's answer.
    meta: dict[str, Any] = Field(default_factory=dict)


class Interjection(BaseModel):
    """An operator's message queued for the next speaker."""

    id: int
    session_id: str
    by: str
    text: str
    created_at: datetime
    consumed_seq: int | None = None  # the transcript line it became, once the discussion heard it
