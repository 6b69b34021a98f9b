"""``TaskResult``: the structured end of every objective, and the confidence gate's input.

Field names are part of the contract (DESIGN §4). Validation is strict: a result that does not
validate is repaired or turned into BLOCKED by the runner, never trusted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from teams.slugs import TeamSlug

MAX_ARTIFACT_BYTES = 512 * 1024
MAX_ARTIFACTS = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")

ShortText = Annotated[str, StringConstraints(max_length=4000)]


class TaskStatus(StrEnum):
    """How an objective ended."""

    COMPLETE = "COMPLETE"
    NEEDS_CLARIFICATION = "NEEDS_CLARIFICATION"
    BLOCKED = "BLOCKED"


ArtifactKind = Literal["markdown", "code", "diagram", "json", "yaml", "sql", "text", "config"]


class Clarification(BaseModel):
    """A question a team needs another team to answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_team: TeamSlug
    question: Annotated[str, StringConstraints(min_length=1, max_length=4000, strip_whitespace=True)]


class Artifact(BaseModel):
    """A delivery file: a relative path inside the run's bundle and its text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=200)
    kind: ArtifactKind
    content: str = Field(max_length=MAX_ARTIFACT_BYTES)

    @field_validator("name")
    @classmethod
    def _safe_relative_path(cls, name: str) -> str:
        path = PurePosixPath(name)
        if (
            not name
            or path.is_absolute()
            or ".." in path.parts
            or not _NAME_RE.match(name)
            or any(part.startswith(".") for part in path.parts)
        ):
            raise ValueError(
                "artifact name must be a relative path of letters, digits, '.', '_', '-' and '/'"
                " with no '..', no leading '/' and no hidden parts, e.g. 'docs/scope.md'"
            )
        return name


class TaskResult(BaseModel):
    """The structured result that ends every objective."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: TaskStatus
    reasoning: Annotated[str, StringConstraints(max_length=8000)]
    blockers: list[ShortText] = Field(default_factory=list, max_length=20)
    assumptions_made: list[ShortText] = Field(default_factory=list, max_length=20)
    verified_facts: list[ShortText] = Field(default_factory=list, max_length=20)
    clarification_needed: Clarification | None = None
    artifacts: list[Artifact] = Field(default_factory=list, max_length=MAX_ARTIFACTS)
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("artifacts")
    @classmethod
    def _unique_names(cls, artifacts: list[Artifact]) -> list[Artifact]:
        names = [a.name for a in artifacts]
        if len(names) != len(set(names)):
            raise ValueError("artifact names must be unique within one result")
        if clash := folder_clash(names):
            raise ValueError(f"artifact {clash!r} is also a folder of another artifact; rename one")
        return artifacts

    @model_validator(mode="after")
    def _status_consistent(self) -> TaskResult:
        if self.status is TaskStatus.NEEDS_CLARIFICATION and self.clarification_needed is None:
            raise ValueError("NEEDS_CLARIFICATION requires clarification_needed")
        if self.status is TaskStatus.BLOCKED and not self.blockers:
            raise ValueError("BLOCKED requires at least one blocker")
        return self


def folder_clash(names: Sequence[str]) -> str | None:
    """A name that is also a folder of another name (``docs`` beside ``docs/a.md``), if any: both
    cannot be files of one bundle."""
    folders = {"/".join(parts[:i]) for parts in (n.split("/") for n in names) for i in range(1, len(parts))}
    clash = sorted(folders.intersection(names))
    return clash[0] if clash else None


def blocked(reason: str, *, reasoning: str = "") -> TaskResult:
    """A BLOCKED result the factory itself produces (e.g. after unrepairable model output)."""
    return TaskResult(
        status=TaskStatus.BLOCKED,
        reasoning=(reasoning or reason)[:8000],
        blockers=[reason[:4000]],
        confidence=0.0,
    )
