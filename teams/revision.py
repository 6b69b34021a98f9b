"""Revisions (workflow A, last step): re-run a finished run from one team, with operator feedback.

The revision is a new run linked to its parent. Stages before the chosen team are reused (their
results and artifact files are carried into the new bundle, not executed again); the parent's
bundle, records and audit are not touched. ``revise`` creates the revision and drives it here;
``submit_revision`` only creates it, for front doors that leave driving to a worker (DESIGN §13).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import InputError, RunNotFound
from memory.base import AuditLog
from teams.base import Run, RunStore, StageRecord, StageStatus
from teams.bundle import sha256_text, write_artifact
from teams.lease import Lease
from teams.pipeline import PipelineEngine, RunOutcome, stored_artifact, validate_requirement
from teams.places import check_bundle_root
from teams.runner import result_json

MAX_FEEDBACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Revision:
    """A revision run checked and built, not yet stored: the run, the stages it reuses, its link."""

    run: Run
    reused: Sequence[StageRecord]
    link: dict[str, Any]


async def revise(
    engine: PipelineEngine,
    store: RunStore,
    audit: AuditLog,
    run_id: str,
    from_team: str,
    feedback: str,
    *,
    out_dir: Path | None = None,
    max_feedback_bytes: int = MAX_FEEDBACK_BYTES,
) -> RunOutcome:
    """Create the revision run and drive it; validation happens before anything is written."""
    revision = await _prepare(engine, store, audit, run_id, from_team, feedback, out_dir, max_feedback_bytes)
    async with store.lease(revision.run.id) as lease:  # held from creation on: no worker takes the new run over
        await _create(engine, store, revision, lease)
        return await engine.drive(revision.run.id, lease=lease)


async def submit_revision(
    engine: PipelineEngine,
    store: RunStore,
    audit: AuditLog,
    run_id: str,
    from_team: str,
    feedback: str,
    *,
    out_dir: Path | None = None,
    max_feedback_bytes: int = MAX_FEEDBACK_BYTES,
    by: str | None = None,
) -> Run:
    """Validate as ``revise`` does and create the revision run, without driving it: a worker takes it
    up as a ``running`` run nobody holds (as ``PipelineEngine.submit`` leaves a new run)."""
    revision = await _prepare(engine, store, audit, run_id, from_team, feedback, out_dir, max_feedback_bytes)
    if by is not None:  # who asked for it (a front door's user or token), kept with the run's creation
        revision = _Revision(revision.run, revision.reused, {**revision.link, "submitted_by": by})
    async with store.lease(revision.run.id) as lease:  # released on return: the run is free to take
        await _create(engine, store, revision, lease)
    return revision.run


async def _prepare(
    engine: PipelineEngine,
    store: RunStore,
    audit: AuditLog,
    run_id: str,
    from_team: str,
    feedback: str,
    out_dir: Path | None,
    max_feedback_bytes: int,
) -> _Revision:
    """Check the revision asked for and build it; nothing is written."""
    parent = await store.get_run(run_id)
    if parent is None:
        raise RunNotFound(f"no run {run_id!r}; start one with `factory run`")
    try:
        feedback = validate_requirement(feedback, max_feedback_bytes)
    except InputError as exc:
        raise InputError(str(exc).replace("requirement", "feedback")) from exc
    if from_team not in parent.pipeline:
        raise InputError(f"team {from_team!r} is not in run {run_id}; its pipeline is {', '.join(parent.pipeline)}")
    start = parent.pipeline.index(from_team)
    stages = await store.stages(run_id)
    unfinished = [s.team for s in stages[:start] if s.status is not StageStatus.COMPLETE or s.result is None]
    if unfinished:
        raise InputError(
            f"stages before {from_team} are not complete in {run_id} ({', '.join(unfinished)});"
            f" resume that run first or revise from {unfinished[0]}"
        )
    check_bundle_root(out_dir or engine.deps.runs_dir)  # before the run exists: a bad place costs nothing
    run = engine.new_run(
        parent.requirement, parent.pipeline, parent.pipeline_name, out_dir, parent_run_id=run_id, feedback=feedback
    )
    reused = [
        s.model_copy(
            update={"attempts": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0, "model": f"reused from {run_id}"}
        )
        for s in stages[:start]
    ]
    parent_audit = await audit.verify(run_id)
    link = {
        "revised_from_team": from_team,
        "parent_audit_head_sha256": parent_audit.head_sha256,
        "reused_results_sha256": {s.team: sha256_text(result_json(s.result)) for s in reused if s.result},
    }
    return _Revision(run, reused, link)


async def _create(engine: PipelineEngine, store: RunStore, revision: _Revision, lease: Lease) -> None:
    """Store the revision run, and carry the reused stages' artifact files into its bundle."""
    run = revision.run
    await engine.create(run, lease, revision.reused, revision.link)
    for stage in revision.reused:
        assert stage.result is not None
        for artifact in stage.result.artifacts:
            write_artifact(Path(run.artifacts_dir), artifact)
        await store.save_artifacts([stored_artifact(run, stage, a) for a in stage.result.artifacts], lease=lease)
