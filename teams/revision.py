"""Revisions (workflow A, last step): re-run a finished run from one team, with operator feedback.

The revision is a new run linked to its parent. Stages before the chosen team are reused (their
results and artifact files are carried into the new bundle, not executed again); the parent's
bundle, records and audit are not touched.
"""

from __future__ import annotations

from pathlib import Path

from factory.errors import InputError, RunNotFound
from memory.base import AuditLog
from teams.base import RunStore, StageStatus
from teams.bundle import sha256_text, write_artifact
from teams.pipeline import PipelineEngine, RunOutcome, stored_artifact, validate_requirement
from teams.places import check_bundle_root
from teams.runner import result_json


async def revise(
    engine: PipelineEngine,
    store: RunStore,
    audit: AuditLog,
    run_id: str,
    from_team: str,
    feedback: str,
    *,
    out_dir: Path | None = None,
    max_feedback_bytes: int = 64 * 1024,
) -> RunOutcome:
    """Create the revision run and drive it; validation happens before anything is written."""
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
    async with store.lease(run.id) as lease:  # held from creation on: no worker takes the new run over
        await engine.create(run, lease, reused, link)
        for stage in reused:
            assert stage.result is not None
            for artifact in stage.result.artifacts:
                write_artifact(Path(run.artifacts_dir), artifact)
            await store.save_artifacts([stored_artifact(run, stage, a) for a in stage.result.artifacts], lease=lease)
        return await engine.drive(run.id, lease=lease)
