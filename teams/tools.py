"""The tools every team has (issue 3): validated tool calls a model may make before its result.

A model answers either with its ``TaskResult`` or with one tool call
``{"tool": NAME, "arguments": {...}}``:

- ``recall(query)`` searches what the factory remembers (``Recall``; until the memory bank lands,
  the run's own earlier artifacts) and returns bounded excerpts;
- ``write_artifact(name, content)`` writes a file into the objective's workspace; it joins the
  result's artifacts unless the result itself carries a file of that name;
- ``request_clarification(target_team, question)`` ends the objective as ``NEEDS_CLARIFICATION``,
  which the gate hands on (to the broker, or to the human until it lands);
- ``check_files(names?)`` (issue 19) runs the team's own checks over the files it has written so
  far, beside the earlier stages' files it reads, and answers with what passed and failed. Offered
  only when the team has checks and the factory checks results (the pipeline passes a ``FileChecker``).

Every call is validated; a rejected call is answered with the reason, never executed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from memory.retention import chunks
from observability.text import storable
from teams.bundle import canonical_name
from teams.parsing import describe_errors
from teams.results import (
    MAX_ARTIFACT_BYTES,
    MAX_ARTIFACTS,
    Artifact,
    ArtifactKind,
    Clarification,
    Storable,
    TaskResult,
    TaskStatus,
    name_clash,
)
from teams.roster import Team
from teams.slugs import TeamSlug
from verify.base import CheckReport, Outcome
from verify.summary import feedback

log = logging.getLogger(__name__)

#: The tools every team has.
TOOL_NAMES = ("recall", "write_artifact", "request_clarification")
#: The tool of a team with checks, when the factory checks results (``FileChecker``).
CHECK_FILES = "check_files"
_ORDER = ("recall", "write_artifact", CHECK_FILES, "request_clarification")
DETAIL_CHARS = 200
RECALL_LIMIT = 3
MAX_WRITTEN = 8
_WORD = re.compile(r"[a-z0-9]{3,}")
_KIND_BY_SUFFIX: dict[str, ArtifactKind] = {
    ".md": "markdown",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".sql": "sql",
    ".mmd": "diagram",
    ".puml": "diagram",
    ".toml": "config",
    ".ini": "config",
    ".cfg": "config",
    ".env": "config",
    ".txt": "text",
}
_CODE_SUFFIXES = {".py", ".ts", ".tsx", ".js", ".jsx", ".go", ".rs", ".java", ".sh", ".css", ".html", ".tf"}

# Tool arguments are audited: their texts must be storable like a result's.
Query = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=400), Storable]
Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000), Storable]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecallArgs(_Strict):
    query: Query


class WriteArtifactArgs(_Strict):
    name: Annotated[str, AfterValidator(canonical_name)]  # canonical: one file, one name
    content: Annotated[str, Field(max_length=MAX_ARTIFACT_BYTES), Storable]


class ClarificationArgs(_Strict):
    target_team: TeamSlug
    question: Question


class CheckFilesArgs(_Strict):
    #: Files written with write_artifact to check; omitted: every one written so far.
    names: (
        Annotated[list[Annotated[str, AfterValidator(canonical_name)]], Field(min_length=1, max_length=MAX_WRITTEN)]
        | None
    ) = None


class RecallCall(_Strict):
    tool: Literal["recall"]
    arguments: RecallArgs


class WriteArtifactCall(_Strict):
    tool: Literal["write_artifact"]
    arguments: WriteArtifactArgs


class ClarificationCall(_Strict):
    tool: Literal["request_clarification"]
    arguments: ClarificationArgs


class CheckFilesCall(_Strict):
    tool: Literal["check_files"]
    arguments: CheckFilesArgs


AnyToolCall = RecallCall | WriteArtifactCall | ClarificationCall | CheckFilesCall
_TOOL_CALL: TypeAdapter[AnyToolCall] = TypeAdapter(Annotated[AnyToolCall, Field(discriminator="tool")])


class ToolProblem(ValueError):
    """A tool call that cannot be executed; the message is what the model is told.

    ``tool`` is the name the model used; ``final`` closes the tools for the rest of the objective
    (e.g. a call repeated verbatim).
    """

    def __init__(self, message: str, *, tool: str, final: bool = False) -> None:
        # Both may quote the model's own text, and both are audited.
        super().__init__(storable(message))
        self.tool = storable(tool)
        self.final = final


def validate_tool_call(data: dict[str, Any], team: Team) -> AnyToolCall:
    """A well-formed call this team may make, or ``ToolProblem`` saying what is wrong."""
    try:
        call = _TOOL_CALL.validate_python(data)
    except ValidationError as exc:
        tool = str(data.get("tool"))[:40]
        raise ToolProblem(
            f"invalid call of {tool!r} (tools: {', '.join(_ORDER)}): {describe_errors(exc, 6)}", tool=tool
        ) from exc
    if isinstance(call, ClarificationCall) and call.arguments.target_team == team.slug:
        raise ToolProblem(
            f"request_clarification cannot target your own team ({team.slug}); ask another team", tool=call.tool
        )
    return call


@dataclass(frozen=True)
class RecallHit:
    """One excerpt found by ``recall``: where it is from, the text, and how well it matched (0..1)."""

    source: str
    excerpt: str
    score: float


class Recall(Protocol):
    """What ``recall(query)`` searches; the memory bank replaces the run-local search later."""

    def available(self) -> bool:
        """Whether there is anything to search (``recall`` is offered only then)."""
        ...

    async def recall(self, query: str, *, limit: int) -> list[RecallHit]: ...


#: Runs a team's checks over ``files`` (each checked) with ``beside`` (its other written files, not
#: checked) next to the earlier stages' files it reads, as the verification gate does; the reports,
#: or None when none of its checks applies. The pipeline makes one per execution from its verifier.
FileChecker = Callable[[Sequence[Artifact], Sequence[Artifact]], Awaitable[Sequence[CheckReport] | None]]


def _terms(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class ArtifactRecall:
    """``Recall`` over the run's own earlier artifacts: chunks scored by the query terms they hold.

    Ties go to the later stage (the more recent decision).
    """

    artifacts: Sequence[tuple[str, Artifact]]  # (team, artifact), in stage order
    chunk_chars: int = 600

    def available(self) -> bool:
        return any(artifact.content.strip() for _, artifact in self.artifacts)

    async def recall(self, query: str, *, limit: int) -> list[RecallHit]:
        wanted = _terms(query)
        if not wanted:
            return []
        scored: list[tuple[float, int, RecallHit]] = []
        for order, (team, artifact) in enumerate(self.artifacts):
            for chunk in chunks(artifact.content, self.chunk_chars):
                score = len(wanted & _terms(chunk)) / len(wanted)
                if score > 0:
                    hit = RecallHit(f"{team}/{artifact.name}", chunk, round(score, 3))
                    scored.append((score, order, hit))
        scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [hit for _, _, hit in scored[:limit]]


def kind_for(team: Team, name: str) -> ArtifactKind:
    """The kind of a written file: the deliverable's if it is one, else from its suffix."""
    for deliverable in team.produces:
        if deliverable.name == name:
            return deliverable.kind  # type: ignore[return-value]
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in _CODE_SUFFIXES:
        return "code"
    return _KIND_BY_SUFFIX.get(suffix, "text")


@dataclass(frozen=True)
class ToolRecord:
    """One tool call of an objective, as audited."""

    tool: str
    arguments: dict[str, Any]
    outcome: str
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "arguments": self.arguments, "outcome": self.outcome, "ok": self.ok}


@dataclass
class Toolbox:
    """The tools of one objective: executes validated calls, keeps the files written (by canonical name)."""

    team: Team
    recall_source: Recall
    excerpt_chars: int = 500
    checker: FileChecker | None = None
    written: dict[str, Artifact] = field(default_factory=dict)
    _calls: set[str] = field(default_factory=set)

    @property
    def offered(self) -> tuple[str, ...]:
        """The tools on offer: ``recall`` only when there is something to search, ``check_files`` only
        when there is a checker (the team has checks and the factory checks results)."""
        available = {
            "recall": self.recall_source.available(),
            CHECK_FILES: self.checker is not None and bool(self.team.checks),
        }
        return tuple(t for t in _ORDER if available.get(t, True))

    @property
    def answer_chars(self) -> int:
        """The most a tool's answer carries: what ``recall``'s excerpts may add up to."""
        return RECALL_LIMIT * self.excerpt_chars

    def check(self, data: dict[str, Any]) -> AnyToolCall:
        """A valid call of an offered tool, not a verbatim repeat; else ``ToolProblem``."""
        call = validate_tool_call(data, self.team)
        if call.tool not in self.offered:
            available = ", ".join(self.offered)
            raise ToolProblem(f"{call.tool} is not available now (available: {available})", tool=call.tool)
        key = call.model_dump_json()
        if isinstance(call, CheckFilesCall):  # checking files again after changing them is no repeat
            key += _digest(self._to_check(call))
        if key in self._calls:
            raise ToolProblem(
                f"{call.tool} was already called with these arguments; use its result", tool=call.tool, final=True
            )
        self._calls.add(key)
        return call

    async def run(self, call: AnyToolCall) -> tuple[str, TaskResult | None]:
        """Execute a call: the text the model is told, and the result if the call ends the objective."""
        if isinstance(call, RecallCall):
            hits = await self.recall_source.recall(call.arguments.query, limit=RECALL_LIMIT)
            if not hits:
                return f"recall({call.arguments.query!r}): nothing found.", None
            lines = [f"[{h.source}, score {h.score}]\n{h.excerpt[: self.excerpt_chars]}" for h in hits]
            return f"recall({call.arguments.query!r}) found {len(hits)}:\n" + "\n".join(lines), None
        if isinstance(call, CheckFilesCall):
            return await self._check_files(call), None
        if isinstance(call, WriteArtifactCall):
            name, content = call.arguments.name, call.arguments.content
            if name not in self.written and len(self.written) >= MAX_WRITTEN:
                return (
                    f"write_artifact: refused, {MAX_WRITTEN} files already written; put the rest in the result.",
                    None,
                )
            if problem := name_clash([*(n for n in self.written if n != name), name]):
                return f"write_artifact: refused, {problem}.", None
            self.written[name] = Artifact(name=name, kind=kind_for(self.team, name), content=content)
            return f"write_artifact: wrote {name} ({len(content.encode('utf-8'))} bytes).", None
        question = call.arguments.question
        result = TaskResult(
            status=TaskStatus.NEEDS_CLARIFICATION,
            reasoning=f"Asked {call.arguments.target_team} through request_clarification.",
            clarification_needed=Clarification(target_team=call.arguments.target_team, question=question),
            artifacts=list(self.written.values()),
            confidence=0.0,
        )
        return f"request_clarification: asked {call.arguments.target_team}.", result

    def _to_check(self, call: CheckFilesCall) -> list[Artifact]:
        """The written files a ``check_files`` call names (all, without names), or ``ToolProblem``."""
        if not self.written:
            raise ToolProblem(
                "check_files: nothing written yet; write your files with write_artifact, then check them",
                tool=call.tool,
            )
        names = call.arguments.names or list(self.written)
        unknown = [n for n in names if n not in self.written]
        if unknown:
            raise ToolProblem(
                f"check_files: {', '.join(map(repr, unknown))} not written with write_artifact"
                f" (written: {', '.join(self.written)}); name written files, or none to check them all",
                tool=call.tool,
            )
        return [self.written[n] for n in dict.fromkeys(names)]

    async def _check_files(self, call: CheckFilesCall) -> str:
        """Run the team's checks over the named written files; a checker that fails is a ``ToolProblem``."""
        assert self.checker is not None  # offered only with one
        files = self._to_check(call)
        chosen = {a.name for a in files}
        beside = [a for name, a in self.written.items() if name not in chosen]
        try:
            reports = await self.checker(files, beside)
        except Exception as exc:  # the checks' own failure never ends the objective: the model is told
            log.warning("check_files of %s could not run: %r", self.team.slug, exc)
            raise ToolProblem(
                f"check_files: the checks could not run ({str(exc)[:DETAIL_CHARS]}); your result is still"
                " checked after you deliver it",
                tool=call.tool,
            ) from exc
        return checks_answer([a.name for a in files], reports or [], self.team.checks, self.answer_chars)

    def merge(self, result: TaskResult) -> TaskResult:
        """The result with the written files it does not itself carry (its own version wins)."""
        merged = list(result.artifacts)
        for name, artifact in self.written.items():
            names = [a.name for a in merged]
            if len(merged) < MAX_ARTIFACTS and name_clash([*names, name]) is None:
                merged.append(artifact)
        if len(merged) == len(result.artifacts):
            return result
        return TaskResult.model_validate({**result.model_dump(), "artifacts": merged})


def _digest(files: Sequence[Artifact]) -> str:
    return hashlib.sha256("\0".join(f"{a.name}\0{a.content}" for a in files).encode()).hexdigest()


def checks_answer(names: Sequence[str], reports: Sequence[CheckReport], checks: Sequence[str], limit: int) -> str:
    """What ``check_files`` tells the model: each check's outcome, why a check did not run, and the
    findings of the failing ones (``verify.summary.feedback``), cut to ``limit`` characters."""
    over = f"check_files over {', '.join(names)}"
    if not reports:
        return storable(f"{over}: none of your checks ({', '.join(checks)}) applies to these files.")[:limit]
    outcomes = [(o, [r.check for r in reports if r.outcome is o]) for o in Outcome]
    lines = [f"{over}: " + "; ".join(f"{o.value} {', '.join(c)}" for o, c in outcomes if c) + "."]
    lines += [
        f"- {r.check} {r.outcome.value}: {' '.join(r.detail.split())[:DETAIL_CHARS]}"
        for r in reports
        if r.outcome in (Outcome.ERROR, Outcome.SKIPPED) and r.detail
    ]
    lines.append(feedback(reports) or "Nothing to fix: no check failed.")
    text = storable("\n".join(lines))
    if len(text) <= limit:
        return text
    more = "\n[... cut: the rest of the findings are not shown]"
    return text[: max(0, limit - len(more))] + more
