"""What fails in an earlier team's files goes back to that team (issue 19).

When a stage's checks fail in files an earlier stage of the run committed (QA's tests failing in the
backend's code), the earlier team runs its objective once more with the findings, inside the later
stage's turn: its new result passes the confidence gate and its own checks, or nothing of it is
kept. Kept, it replaces the team's files in the bundle and its stage record (its ``stage.revised``
audit entry names the hashes and why), and the later stage's checks run again over the new files.
A crash in between leaves either the old files or the new ones committed, never a mix: the stage
record and its files commit together under the run's lease, as a stage's completion does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teams.base import Run, StageStatus
from teams.bundle import write_artifacts
from teams.earlier_files import refuse_clashing_files
from teams.gate import GateDecision, GateLimits, Verdict, decide
from teams.lease import Lease
from teams.records import PipelineDeps, account, execution_entry, objective_for, stored_artifact
from teams.roster import team
from teams.runner import PriorArtifact
from teams.tools import ArtifactRecall

log = logging.getLogger(__name__)
Emit = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class SentBack:
    """How a send-back ended: ``kept`` the owner's new files, else ``why`` not (for the operator)."""

    kept: bool
    why: str = ""


async def send_back(
    deps: PipelineDeps,
    emit: Emit,
    run: Run,
    lease: Lease,
    owner: str,
    findings: str,
    prior: list[PriorArtifact],
    *,
    limits: GateLimits,
    hold_s: float,
    by: str,
) -> SentBack:
    """Run ``owner``'s objective again with ``findings`` (failures ``by``'s checks found in its files);
    keep its new result if it passes its gate and checks, updating ``prior`` in place."""
    stage = next(
        (s for s in await deps.store.stages(run.id) if s.team == owner and s.status is StageStatus.COMPLETE),
        None,
    )
    if stage is None or stage.result is None:
        return SentBack(False, f"{owner} has no committed result in this run to revise")
    member = team(owner)
    wanted = set(member.reads)
    context = [p for p in prior if p.team in wanted and p.team != owner]
    stage.attempts += 1
    objective = objective_for(run, stage, member)
    note = (
        f"The checks of {by}, a later team, failed in your files. Fix your files so that they pass;"
        f" keep every other file as it was.\n{findings}"
    )
    recall = ArtifactRecall([(p.team, p.artifact) for p in prior])
    await emit("stage.sent_back", run.id, stage=stage.index, team=owner, by=by)
    execution = await deps.runner.execute(member, objective, run.requirement, context, [note], recall)
    account(stage, execution)
    refuse_clashing_files(execution, [p.artifact.name for p in prior if p.team != owner])
    decision = decide(
        execution.result,
        failures=int(execution.system_blocked),
        executions=1,
        limits=limits,
        system_blocked=execution.system_blocked,
    )
    verification = None
    if decision.verdict is Verdict.ADVANCE and deps.verifier is not None:
        try:
            verification = await deps.verifier.verify(run, stage, member, execution.result, context)
        except Exception as exc:  # the checks' own failure: recorded, and the old files stay
            execution.checks = {"error": f"the checks could not run: {exc}"}
            decision = GateDecision(Verdict.ESCALATE, f"the checks of {owner}'s revision could not run: {exc}")
        if verification is not None:
            execution.checks = verification.audit()
            if verification.failed:
                failing = ", ".join(r.check for r in verification.failed)
                decision = GateDecision(Verdict.ESCALATE, f"{owner}'s revision fails its own checks ({failing})")
    if decision.verdict is not Verdict.ADVANCE:
        why = f"{owner} was sent the findings but its revision was not kept: {decision.reason}"
        decision = GateDecision(Verdict.ESCALATE, why)
    execution.audit = execution_entry(stage, execution, decision)
    if decision.verdict is not Verdict.ADVANCE:
        await deps.audit.append(run.id, *execution.audit)
        await deps.store.save_stage(stage, lease=lease)  # its attempt and tokens; its result unchanged
        await emit("stage.sent_back_refused", run.id, stage=stage.index, team=owner, reason=decision.reason)
        return SentBack(False, decision.reason)
    result = execution.result
    await deps.store.hold(lease, for_s=hold_s)
    await asyncio.to_thread(write_artifacts, Path(run.artifacts_dir), result.artifacts)
    stored = [stored_artifact(run, stage, artifact) for artifact in result.artifacts]
    stage.result, stage.finished_at = result, datetime.now(UTC)
    if verification is not None:
        stage.checks = verification.brief()
    await deps.store.save_stage(stage, stored, lease=lease)
    revised: tuple[str, str, dict[str, Any]] = (
        f"stage.{stage.index}.revised.{stage.attempts}",
        "stage.revised",
        {"stage": stage.index, "team": owner, "because": f"checks of {by} failed in its files",
         "artifacts": {a.name: a.sha256 for a in stored}},
    )  # fmt: skip
    await deps.audit.append_many(run.id, [execution.audit, revised])
    replace_prior(prior, owner, result.artifacts)
    await emit("stage.revised", run.id, stage=stage.index, team=owner, by=by)
    return SentBack(True)


def replace_prior(prior: list[PriorArtifact], owner: str, artifacts: Sequence[Any]) -> None:
    """``owner``'s earlier files in ``prior`` replaced by ``artifacts``, where the old ones stood."""
    at = next((i for i, p in enumerate(prior) if p.team == owner), len(prior))
    kept = [p for p in prior if p.team != owner]
    prior[:] = [*kept[:at], *(PriorArtifact(owner, a) for a in artifacts), *kept[at:]]  # type: ignore[arg-type]
