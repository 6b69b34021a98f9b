"""Request bodies of the REST API (responses are the factory's own models, dumped as JSON).

Bodies are closed (unknown fields refused, so a misspelt ``reason`` is not silently ignored) and
bounded; the rules of the values themselves (a requirement's size, a reason being required, a team
existing) stay in the services, which give the same message as the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_TEXT = 256 * 1024  # far above the services' own limits: those refuse with their own words


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCreate(Body):
    requirement: str = Field(max_length=_TEXT, description="What to build, in plain words.")
    pipeline: str = Field(default="phase1", max_length=2000, description="phase1, full, or team slugs a,b,c.")


class RunCancel(Body):
    reason: str | None = Field(default=None, max_length=_TEXT)


class RevisionCreate(Body):
    from_team: str = Field(max_length=200, description="The first team that runs again.")
    feedback: str = Field(max_length=_TEXT, description="What to change.")


class Versioned(Body):
    version: int | None = Field(
        default=None, ge=0, description="The escalation's version you saw: refused (409) if it changed since."
    )


class AnswerBody(Versioned):
    text: str = Field(max_length=_TEXT)


class ApproveBody(Versioned):
    notes: str | None = Field(default=None, max_length=_TEXT)


class RejectBody(Versioned):
    reason: str = Field(max_length=_TEXT, description="Why; the stage runs again with it as feedback.")


class DeferBody(Versioned):
    until: datetime | None = Field(default=None, description="Decide by then (ISO 8601; UTC if no zone).")
    hours: float | None = Field(default=None, gt=0, le=24 * 30, description="Decide within this many hours.")


class BatchApprove(Body):
    ids: list[str] | None = Field(default=None, max_length=500, description="Escalations to approve.")
    all_low_risk: bool = Field(default=False, description="Every waiting low-risk escalation.")
    notes: str | None = Field(default=None, max_length=_TEXT)


class RoutingChange(Body):
    alias: str = Field(max_length=200, description="factory/architect|coder|fast|cheap (or just coder).")
    chain: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=20,
        description="Deployments in fallback order, as in factory.toml's [routing] table: {model, api_base?,"
        " key_env?, key_secret?, timeout_s?, max_tokens?, ...}.",
    )


class Question(Body):
    question: str = Field(max_length=_TEXT)
    run_id: str | None = Field(default=None, max_length=200)
