"""A stage's files against the earlier stages' files of its run: which it replaces, and which it
cannot sit beside (a file where an earlier stage wrote a folder, or the reverse)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from teams.base import Run, StageRecord, StoredArtifact
from teams.bundle import sha256_text
from teams.records import replaced_artifacts
from teams.results import TaskResult, TaskStatus, blocked, name_clash
from teams.runner import Execution, PriorArtifact


def replaced_by(run: Run, stage: StageRecord, prior: Sequence[PriorArtifact], result: TaskResult) -> dict[str, Any]:
    """The earlier stages' files this stage's result replaces (``replaced_artifacts``), found among
    the earlier results the drive holds (every earlier stage's files: no query)."""
    names = {a.name.casefold() for a in result.artifacts}
    earlier = [
        StoredArtifact(
            run_id=run.id,
            stage_index=run.pipeline.index(p.team),
            team=p.team,
            name=p.artifact.name,
            kind=p.artifact.kind,
            sha256=sha256_text(p.artifact.content),
            bytes=len(p.artifact.content.encode("utf-8")),
        )
        for p in prior
        if p.artifact.name.casefold() in names
    ]
    return replaced_artifacts(earlier, stage.index, [a.name for a in result.artifacts])


def refuse_clashing_files(execution: Execution, taken: Sequence[str]) -> None:
    """Turn a COMPLETE result whose files cannot sit beside the earlier stages' (``docs`` as a file
    where an earlier stage wrote ``docs/a.md``, or the reverse) into unusable output. Writing a file
    an earlier stage wrote is allowed: it is audited as a replacement."""
    result = execution.result
    if result.status is not TaskStatus.COMPLETE or not taken or not result.artifacts:
        return
    names = {n.casefold(): n for n in [*taken, *(a.name for a in result.artifacts)]}
    why = name_clash(list(names.values()))
    if why is not None:
        execution.problem = f"{why} (a file or folder an earlier stage wrote)"
        execution.system_blocked = True
        execution.result = blocked(f"model output unusable: {execution.problem}")
