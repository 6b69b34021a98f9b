"""What the pipeline engine is given and gives back, and the records it makes of a stage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.base import ClarificationBroker
from factory.errors import InputError
from hitl.base import Escalation, EscalationQueue
from hitl.sla import SlaPolicy
from memory.base import AuditLog, AuditReport
from observability.base import EventSink
from observability.text import unstorable
from teams.base import Objective, Run, RunStore, StageRecord, StoredArtifact
from teams.bundle import sha256_text
from teams.gate import GateDecision, GateLimits
from teams.results import Artifact
from teams.roster import Team
from teams.runner import Execution, TeamRunner
from teams.stage_memory import StageMemory

if TYPE_CHECKING:
    from teams.verification import StageVerifier


def validate_requirement(text: str, max_bytes: int) -> str:
    """A requirement worth running, or ``InputError`` saying what to fix."""
    if not text or not text.strip():
        raise InputError("the requirement is empty; describe what to build, e.g. 'a URL shortener with an API'")
    if problem := unstorable(text):  # before measuring: a lone surrogate has no UTF-8 size
        raise InputError(f"the requirement {problem}; send plain text")
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InputError(
            f"the requirement is {size} bytes, over the {max_bytes}-byte limit;"
            " shorten it or raise FACTORY_MAX_REQUIREMENT_BYTES"
        )
    return text.strip()


@dataclass(frozen=True)
class PipelineDeps:
    """Everything the engine needs, built once in the composition root."""

    store: RunStore
    audit: AuditLog
    escalations: EscalationQueue
    runner: TeamRunner
    events: EventSink
    limits: GateLimits
    runs_dir: Path
    max_requirement_bytes: int = 64 * 1024
    #: Routes NEEDS_CLARIFICATION to the target team; without one, the question goes to the human.
    broker: ClarificationBroker | None = None
    #: Packs each stage's context from memory and retains what it learned; without it a stage
    #: reads the earlier artifacts it names, cut to the runner's budget.
    memory: StageMemory | None = None
    #: Deadlines of the escalations the gate opens.
    sla: SlaPolicy = field(default_factory=SlaPolicy)
    #: The current model routing, as a new run records and keeps it (models, bases, key
    #: references; never a key). Without it a run records none and follows the process's routing.
    routing: Callable[[], Awaitable[dict[str, Any] | None]] | None = None
    #: The current run policy, as a new run records and keeps it (``GateLimits`` fields, budgets,
    #: clarification limits); without it a run follows ``limits`` and the broker's own limits.
    policy: Callable[[], Awaitable[dict[str, Any] | None]] | None = None
    #: Checks each result a stage would commit (the verification gate); without it, none are run.
    verifier: StageVerifier | None = None


@dataclass
class StageTiming:
    """Where one stage's time went: all of it, and the part spent waiting on the model."""

    team: str
    wall_s: float
    model_s: float
    started_s: float = 0.0  # ``time.perf_counter()`` at the stage's start: other timed work can be placed in it


@dataclass
class RunOutcome:
    run: Run
    stages: list[StageRecord]
    escalations: list[Escalation]
    audit: AuditReport
    timings: list[StageTiming] = field(default_factory=list)
    error: str | None = None


def execution_entry(
    stage: StageRecord, execution: Execution, decision: GateDecision
) -> tuple[str, str, dict[str, Any]]:
    """The audit entry of one execution: its result, tool calls, model calls and the gate's verdict."""
    payload = {
        "stage": stage.index,
        "team": stage.team,
        "attempt": stage.attempts,
        "result": execution.result.model_dump(mode="json"),
        "output_problem": execution.problem,
        "tool_calls": [t.as_dict() for t in execution.tool_calls],
        "calls": [r.model_dump(exclude={"text"}) for r in execution.responses],
        "gate": {"verdict": decision.verdict.value, "reason": decision.reason},
    }
    if execution.checks is not None:
        payload["checks"] = execution.checks
    return f"stage.{stage.index}.execution.{stage.attempts}", "stage.execution", payload


def completion_entry(stage: StageRecord, hashes: dict[str, str], **extra: Any) -> tuple[str, str, dict[str, Any]]:
    """The audit entry of a committed stage: its artifacts' SHA-256."""
    payload = {"stage": stage.index, "team": stage.team, "artifacts": hashes, **extra}
    return f"stage.{stage.index}.complete", "stage.complete", payload


def result_completion_entry(stage: StageRecord, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    """``completion_entry`` of a stage from its stored result (its artifacts' text hashed)."""
    artifacts = stage.result.artifacts if stage.result is not None else []
    return completion_entry(stage, {a.name: sha256_text(a.content) for a in artifacts}, **extra)


def stored_artifact(run: Run, stage: StageRecord, artifact: Artifact) -> StoredArtifact:
    """The store's record of an artifact written to the run's bundle."""
    return StoredArtifact(
        run_id=run.id,
        stage_index=stage.index,
        team=stage.team,
        name=artifact.name,
        kind=artifact.kind,
        sha256=sha256_text(artifact.content),
        bytes=len(artifact.content.encode("utf-8")),
    )


def replaced_artifacts(
    earlier: Sequence[StoredArtifact], stage_index: int, names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The files of other stages that stage ``stage_index`` overwrites by writing ``names``: for each
    such name, the ``name``, ``stage``, ``team`` and ``sha256`` of the file it replaces (empty when
    every file is new). Names are compared ignoring case, as on a case-insensitive file system they
    are one file; of several earlier writers the latest counts (``earlier`` in stage order)."""
    previous = {a.name.casefold(): a for a in earlier if a.stage_index != stage_index}
    replaced: dict[str, dict[str, Any]] = {}
    for name in names:
        old = previous.get(name.casefold())
        if old is not None:
            replaced[name] = {"name": old.name, "stage": old.stage_index, "team": old.team, "sha256": old.sha256}
    return replaced


def checks_total(figures: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stages' verification figures (``StageRecord.checks``) added up: a run's, or the runs' of a
    usage report (None when no stage was checked)."""
    checked = [c for c in figures if c]
    if not checked:
        return None
    total: dict[str, Any] = {"stages_checked": len(checked), "security": {}}
    for key in ("run", "passed", "failed", "errored", "skipped", "artifacts_checked", "artifacts_total",
                "tests_passed", "tests_failed"):  # fmt: skip
        total[key] = sum(int(c.get(key, 0)) for c in checked)
    for c in checked:
        for severity, count in (c.get("security") or {}).items():
            total["security"][severity] = total["security"].get(severity, 0) + int(count)
    return total


def account(stage: StageRecord, execution: Execution) -> None:
    """Add ``execution``'s model calls to ``stage``'s tokens, cost and model."""
    for response in execution.responses:
        stage.tokens_in += response.tokens_in
        stage.tokens_out += response.tokens_out
        stage.cost_usd += response.cost_usd
        stage.model = f"{response.alias} -> {response.model}"


def objective_for(run: Run, stage: StageRecord, member: Team) -> Objective:
    """The objective of ``member``'s stage at its current attempt."""
    return Objective(
        id=f"{run.id}:{stage.index}",
        run_id=run.id,
        team=member.slug,
        goal=member.goal,
        acceptance_criteria=list(member.acceptance_criteria),
        attempt=stage.attempts,
    )
