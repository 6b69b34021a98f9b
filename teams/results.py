"""``TaskResult``: the structured end of every objective, and the confidence gate's input.

Field names are part of the contract (DESIGN §4). Validation is strict: a result that does not
validate is repaired or turned into BLOCKED by the runner, never trusted. Every text must be storable
(no NUL, no lone surrogate: ``observability.text``) and every artifact name is canonical
(``teams.bundle.canonical_name``), so what validates can be committed and written as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from observability.text import must_be_storable, storable
from teams.bundle import canonical_name
from teams.slugs import TeamSlug

MAX_ARTIFACT_BYTES = 512 * 1024
MAX_ARTIFACTS = 32


def _storable_input(value: object) -> object:
    return must_be_storable(value) if isinstance(value, str) else value


#: Every text of a result is committed to PostgreSQL: one it cannot store is invalid output. Checked
#: before the type, so a lone surrogate gets this message rather than pydantic's "not a unicode string".
Storable = BeforeValidator(_storable_input)
ShortText = Annotated[str, StringConstraints(max_length=4000), Storable]


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
    question: Annotated[str, StringConstraints(min_length=1, max_length=4000, strip_whitespace=True), Storable]


class Artifact(BaseModel):
    """A delivery file: a relative path inside the run's bundle and its text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(canonical_name)]  # stored in its canonical form
    kind: ArtifactKind
    content: Annotated[str, Field(max_length=MAX_ARTIFACT_BYTES), Storable]


class TaskResult(BaseModel):
    """The structured result that ends every objective."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: TaskStatus
    reasoning: Annotated[str, StringConstraints(max_length=8000), Storable]
    blockers: list[ShortText] = Field(default_factory=list, max_length=20)
    assumptions_made: list[ShortText] = Field(default_factory=list, max_length=20)
    verified_facts: list[ShortText] = Field(default_factory=list, max_length=20)
    clarification_needed: Clarification | None = None
    artifacts: list[Artifact] = Field(default_factory=list, max_length=MAX_ARTIFACTS)
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("artifacts")
    @classmethod
    def _unique_names(cls, artifacts: list[Artifact]) -> list[Artifact]:
        if problem := name_clash([a.name for a in artifacts]):
            raise ValueError(problem)
        return artifacts

    @model_validator(mode="after")
    def _status_consistent(self) -> TaskResult:
        if self.status is TaskStatus.NEEDS_CLARIFICATION and self.clarification_needed is None:
            raise ValueError("NEEDS_CLARIFICATION requires clarification_needed")
        if self.status is TaskStatus.BLOCKED and not self.blockers:
            raise ValueError("BLOCKED requires at least one blocker")
        return self


def name_clash(names: Sequence[str]) -> str | None:
    """Why these canonical names cannot all be files of one bundle, or ``None``.

    Names are compared ignoring case: on a case-insensitive file system (macOS, Windows) ``A.md``
    and ``a.md`` are one file, and its hash would match only one of them. A name that is also a
    folder of another (``docs`` beside ``docs/a.md``) cannot be a file too.
    """
    folded = [n.casefold() for n in names]
    seen: set[str] = set()
    for name, key in zip(names, folded, strict=True):
        if key in seen:
            return f"artifact names must be unique within one result (ignoring case and './'): {name!r} repeats"
        seen.add(key)
    folders = {"/".join(parts[:i]) for parts in (n.split("/") for n in folded) for i in range(1, len(parts))}
    clash = sorted(folders.intersection(folded))
    if clash:
        return f"artifact {clash[0]!r} is also a folder of another artifact; rename one"
    return None


def blocked(reason: str, *, reasoning: str = "") -> TaskResult:
    """A BLOCKED result the factory itself produces (e.g. after unrepairable model output); its texts
    may quote model output, so they are made storable rather than refused."""
    return TaskResult(
        status=TaskStatus.BLOCKED,
        reasoning=storable(reasoning or reason)[:8000],
        blockers=[storable(reason)[:4000] or "blocked"],
        confidence=0.0,
    )
