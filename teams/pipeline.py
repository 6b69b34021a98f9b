"""The pipeline engine: stages in order, each gated (DESIGN §5), every step committed durably.

Per stage: mark running → execute the objective (with repair) → gate → on ADVANCE write artifacts,
record and audit; on ESCALATE open an escalation and leave the run ``waiting_human``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory.errors import BudgetExceeded, FactoryError, LeaseLost, PipelineError, RunNotFound
from hitl.base import Change, EscalationStatus
from hitl.desk import decision_audit, opened_audit
from memory.base import AuditEntry
from memory.packing import PackedContext
from observability.base import Event
from observability.logs import bind_log_context, log_context
from teams.asking import ask_team, broker_limits_of, unanswered
from teams.base import Run, RunStatus, StageRecord, StageStatus
from teams.bundle import write_artifacts
from teams.cancel import cancel_run
from teams.decisions import Resumption, StageDecision, stage_decision
from teams.earlier_files import refuse_clashing_files, replaced_by
from teams.escalation import escalation_for
from teams.gate import GateDecision, Verdict, after_checks, decide, limits_of
from teams.lease import Lease
from teams.places import check_bundle_root
from teams.records import (
    PipelineDeps,
    RunOutcome,
    StageTiming,
    account,
    completion_entry,
    execution_entry,
    objective_for,
    result_completion_entry,
    stored_artifact,
    validate_requirement,
)
from teams.results import Artifact, TaskResult, TaskStatus, blocked
from teams.roster import Team, resolve_pipeline, team
from teams.runner import Compactor, Execution, PriorArtifact
from teams.send_back import send_back
from teams.slugs import TeamSlug
from teams.snapshot import anchor_manifest, snapshot_run
from teams.tools import ArtifactRecall, FileChecker, Recall
from verify.base import CheckReport

log = logging.getLogger(__name__)

#: A stage is executed at most this many iteration caps in all, across resumes and decisions: a run
#: that crashes the process at the same stage every time ends failed instead of looping.
MAX_RESUMES = 5
#: A stage's files are written (and an escalation opened) only while its lease surely holds the run
#: this much longer (at most half the lease's lifetime).
FILES_HELD_S = 5.0

__all__ = ["PipelineDeps", "PipelineEngine", "RunOutcome", "StageTiming", "stored_artifact", "validate_requirement"]


def now() -> datetime:
    return datetime.now(UTC)


class PipelineEngine:
    """Runs pipelines; safe to call ``drive`` again on a run (completed stages are kept)."""

    def __init__(self, deps: PipelineDeps) -> None:
        self._d = deps
        self._anchoring: dict[str, asyncio.Task[None]] = {}  # per run: the manifest anchor being written

    @property
    def deps(self) -> PipelineDeps:
        return self._d

    async def start(self, requirement: str, pipeline: str, out_dir: Path | None = None) -> RunOutcome:
        """Validate everything, then create the run and drive it."""
        requirement = validate_requirement(requirement, self._d.max_requirement_bytes)
        name, slugs = resolve_pipeline(pipeline)
        check_bundle_root(out_dir or self._d.runs_dir)  # before the run exists: a bad place costs nothing
        run = self.new_run(requirement, list(slugs), name, out_dir)
        async with self._d.store.lease(run.id) as lease:  # held from creation on: no worker takes it over
            await self.create(run, lease)
            return await self.drive(run.id, lease=lease)

    async def submit(
        self, requirement: str, pipeline: str, out_dir: Path | None = None, *, by: str | None = None
    ) -> Run:
        """Validate everything and create the run, without driving it: a worker (or a driver the
        caller starts) takes it up as a ``running`` run nobody holds. For front doors whose
        connection must not carry the run (the chat, the API); ``by``: who submitted it (audited)."""
        requirement = validate_requirement(requirement, self._d.max_requirement_bytes)
        name, slugs = resolve_pipeline(pipeline)
        check_bundle_root(out_dir or self._d.runs_dir)
        run = self.new_run(requirement, list(slugs), name, out_dir)
        async with self._d.store.lease(run.id) as lease:  # released on return: the run is free to take
            await self.create(run, lease, link={"submitted_by": by} if by is not None else None)
        return run

    async def cancel(self, run_id: str, *, by: str, reason: str | None = None) -> Run:
        """Cancel a run that is not finished, even while another process drives it (that driver stops,
        writing nothing more); its waiting escalations are closed. See ``teams.cancel``."""
        return await cancel_run(self._d, run_id, by=by, reason=reason)

    def new_run(
        self, requirement: str, pipeline: list[TeamSlug], name: str, out_dir: Path | None, **fields: Any
    ) -> Run:
        """A new run record (not yet stored); ``fields``: ``parent_run_id`` and ``feedback`` of a revision."""
        return Run.new(requirement, pipeline, name, out_dir or self._d.runs_dir, **fields)

    async def create(
        self, run: Run, lease: Lease, reused: Sequence[StageRecord] = (), link: dict[str, Any] | None = None
    ) -> None:
        """Store the run and its stages; ``reused`` stages (of a revised run) count as complete."""
        stages = [
            reused[index].model_copy(update={"run_id": run.id})
            if index < len(reused)
            else StageRecord(run_id=run.id, index=index, team=slug)
            for index, slug in enumerate(run.pipeline)
        ]
        if run.routing is None and self._d.routing is not None:
            run.routing = await self._d.routing()  # the run keeps the routing it started with
        if run.policy is None and self._d.policy is not None:
            run.policy = await self._d.policy()  # and the policy
        await self._d.store.create_run(run, stages, lease=lease)
        created = {
            "requirement": run.requirement,
            "pipeline": run.pipeline,
            "pipeline_name": run.pipeline_name,
            "parent_run_id": run.parent_run_id,
            "feedback": run.feedback,
            **({"routing": run.routing} if run.routing is not None else {}),
            **({"policy": run.policy} if run.policy is not None else {}),
            **(link or {}),
        }
        # A reused stage's completion is recorded with the run's creation, naming the run it comes
        # from (not later, as if a crash had kept it off the audit).
        reused_entries = [result_completion_entry(s, reused_from=run.parent_run_id) for s in stages[: len(reused)]]
        await self._d.audit.append_many(run.id, [("run.created", "run.created", created), *reused_entries])
        await self._emit("run.started", run.id, pipeline=run.pipeline, artifacts_dir=run.artifacts_dir)

    async def drive(self, run_id: str, *, lease: Lease | None = None) -> RunOutcome:
        """Run every stage not yet complete, in order, until done or waiting on a human.

        A stage that waits on a human moves only once its escalations are decided (see
        ``teams.decisions``). One process drives a run at a time: the run's lease is taken here
        (``RunBusy`` if another process holds it) unless the caller holds it (``lease``). Every
        commit checks the lease: a driver that lost the run stops with ``LeaseLost``, writing nothing."""
        with log_context(run_id=run_id):
            if lease is not None:
                return await self._drive_anchored(run_id, lease)
            async with self._d.store.lease(run_id) as held:
                return await self._drive_anchored(run_id, held)

    async def _drive_anchored(self, run_id: str, lease: Lease) -> RunOutcome:
        """``_drive``, its manifest anchor settled while the lease still holds the run (the next
        driver's manifest is never overwritten by this one's)."""
        try:
            return await self._drive(run_id, lease)
        finally:
            await self._anchored(run_id)

    async def _drive(self, run_id: str, lease: Lease) -> RunOutcome:
        run = await self._d.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}; start one with `factory run`")
        stages = await self._d.store.stages(run_id)
        await self._recover_audit(run, stages)
        await self._recover_memory(run, stages)
        if run.status in (RunStatus.COMPLETE, RunStatus.CANCELLED):
            return await self.outcome(run_id)
        await self._d.store.set_run_status(run_id, RunStatus.RUNNING, lease=lease)
        timings: list[StageTiming] = []
        prior: list[PriorArtifact] = []
        error = None
        for stage in stages:
            if stage.status is StageStatus.COMPLETE and stage.result is not None:
                prior.extend(PriorArtifact(stage.team, a) for a in stage.result.artifacts)
                continue
            bind_log_context(stage=stage.index, team=stage.team)
            decision = await self._decision(run, stage, lease)
            if decision.action is Resumption.WAIT:
                await self._d.store.set_run_status(run_id, RunStatus.WAITING_HUMAN, lease=lease)
                break
            if decision.action is Resumption.CANCEL:
                await self._cancel(run, stage, decision, lease)
                break
            try:
                if decision.action is Resumption.COMPLETE and stage.result is not None:
                    await self._complete(run, stage, stage.result, lease, prior)
                    advanced = True
                else:
                    advanced = await self._run_stage(run, stage, lease, prior, timings, decision.notes)
            except LeaseLost:
                raise  # another process drives the run now: nothing more is written here
            except FactoryError as exc:
                error = str(exc)
                await self._fail(run, stage, error, lease)
                break
            if not advanced:
                await self._d.store.set_run_status(run_id, RunStatus.WAITING_HUMAN, lease=lease)
                await self._emit("run.waiting_human", run_id, stage=stage.index, team=stage.team)
                break
            assert stage.result is not None
            prior.extend(PriorArtifact(stage.team, a) for a in stage.result.artifacts)
        else:
            try:
                await self._finish(run, lease)
            except LeaseLost:
                raise
            except FactoryError as exc:  # e.g. the manifest cannot be written: resuming finishes it
                error = str(exc)
                await self._d.store.set_run_status(run_id, RunStatus.FAILED, lease=lease)
                await self._emit("run.failed", run_id, error=error)
        outcome = await self.outcome(run_id)
        outcome.timings, outcome.error = timings, error
        return outcome

    async def _recover_audit(self, run: Run, stages: list[StageRecord]) -> None:
        """Record the completion of stages committed just before a crash took their audit entry
        (their deciding execution's details went with the process; the entry says it was recovered)."""
        complete = [s for s in stages if s.status is StageStatus.COMPLETE and s.result is not None]
        if not complete:
            return
        recorded = {e.key for e in await self._d.audit.entries(run.id)}
        missing = [
            result_completion_entry(s, recovered=True) for s in complete if f"stage.{s.index}.complete" not in recorded
        ]
        if missing:
            log.warning("run %s: recording %d stage completions a crash left unaudited", run.id, len(missing))
            await self._d.audit.append_many(run.id, missing)

    async def _recover_memory(self, run: Run, stages: list[StageRecord]) -> None:
        """Retain what complete stages learned if their memory is missing (see ``unretained``)."""
        complete: dict[str, StageRecord] = {
            s.team: s for s in stages if s.status is StageStatus.COMPLETE and s.result is not None
        }
        if self._d.memory is None or not complete:
            return
        try:
            missing = await self._d.memory.unretained(run, list(complete))
        except FactoryError as exc:
            log.warning("could not check the memory of run %s: %s", run.id, exc)
            return
        for slug in missing:
            stage = complete[slug]
            assert stage.result is not None
            await self._retain(run, stage, stage.result, None)

    async def _decision(self, run: Run, stage: StageRecord, lease: Lease) -> StageDecision:
        """How a stage resumes: a stage never executed simply runs; one that ran before carries the
        operator's decisions on its escalations (recorded in the audit once, whoever resumes)."""
        if stage.attempts == 0 and stage.status is not StageStatus.WAITING_HUMAN:
            return StageDecision(Resumption.RERUN)
        history = await self._d.escalations.for_stage(run.id, stage.index)
        decision = stage_decision(history)
        # Every escalation of the stage and its decision are on record (idempotent: a crash between
        # an escalation or decision and its audit entry leaves nothing missing once resumed).
        entries = [opened_audit(e) for e in history]
        if decision.decided is not None:
            entries.append(decision_audit(decision.decided))
        if entries:
            await self._d.audit.append_many(run.id, entries)
        if decision.action is Resumption.WAIT and stage.status is not StageStatus.WAITING_HUMAN:
            stage.status = StageStatus.WAITING_HUMAN  # a crash came between the escalation and its stage
            await self._d.store.save_stage(stage, lease=lease)
        return decision

    async def _cancel(self, run: Run, stage: StageRecord, decision: StageDecision, lease: Lease) -> None:
        reason = decision.decided.answer if decision.decided is not None else None
        stage.status, stage.finished_at = StageStatus.FAILED, now()
        await self._d.store.save_stage(stage, lease=lease)
        await self._d.store.set_run_status(run.id, RunStatus.CANCELLED, lease=lease)
        await self._d.audit.append(
            run.id, "run.cancelled", "run.cancelled", {"stage": stage.index, "team": stage.team, "reason": reason}
        )
        await self._emit("run.cancelled", run.id, stage=stage.index, team=stage.team, reason=reason)

    async def outcome(self, run_id: str) -> RunOutcome:
        run = await self._d.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        return RunOutcome(
            run=run,
            stages=await self._d.store.stages(run_id),
            escalations=await self._d.escalations.list_open(run_id),
            audit=await self._d.audit.verify(run_id),
        )

    async def _run_stage(
        self,
        run: Run,
        stage: StageRecord,
        lease: Lease,
        prior: list[PriorArtifact],
        timings: list[StageTiming],
        operator_notes: Sequence[str] = (),
    ) -> bool:
        started = time.perf_counter()
        member = team(stage.team)
        wanted = set(member.reads)
        context = [p for p in prior if p.team in wanted]
        # The attempt number is committed before the model is called: a re-run after a crash
        # starts a new attempt, so no audit key or escalation id is ever reused.
        if stage.attempts >= limits_of(run, self._d.limits).iteration_cap * MAX_RESUMES:
            raise PipelineError(
                f"{stage.team} was executed {stage.attempts} times across resumes without completing;"
                " revise the run from this team with feedback (`factory revise`)"
            )
        stage.attempts += 1
        # A new attempt owns no result yet: an approval decided after a crash can never accept an
        # earlier attempt's result in its place.
        stage.status, stage.started_at, stage.finished_at, stage.result = StageStatus.RUNNING, now(), None, None
        await self._emit("stage.started", run.id, stage=stage.index, team=stage.team)
        packing = asyncio.create_task(self._memory_context(run, stage, member, prior))  # beside the save
        try:
            await self._d.store.save_stage(stage, lease=lease)
        except BaseException:
            await _stop(packing)
            raise
        recall, packed = await packing
        try:
            execution, decision, model_s = await self._execute_until_decided(
                run, stage, lease, member, context, recall, packed.text if packed else None, operator_notes,
                taken=[p.artifact.name for p in prior], prior=prior,
            )  # fmt: skip
        except BudgetExceeded as exc:  # the operator decides: more budget, or stop the run
            execution, model_s = Execution(result=blocked(str(exc))), 0.0
            decision = GateDecision(Verdict.ESCALATE, str(exc), kind="budget", priority="high")
        stage.result = execution.result
        if decision.verdict is Verdict.ADVANCE:
            await self._complete(run, stage, execution.result, lease, prior, packed, execution)
            advanced = True
        else:
            await self._escalate(run, stage, execution.result, decision, lease)
            advanced = False
        timings.append(StageTiming(stage.team, time.perf_counter() - started, model_s, started))
        return advanced

    async def _memory_context(
        self, run: Run, stage: StageRecord, member: Team, prior: list[PriorArtifact]
    ) -> tuple[Recall, PackedContext | None]:
        """The stage's ``recall`` tool and its packed memory (None without memory, or if it fails)."""
        # recall(query) searches every earlier artifact of the run, not only those the team reads.
        fallback = ArtifactRecall([(p.team, p.artifact) for p in prior])
        if self._d.memory is None:
            return fallback, None
        try:
            packed = await self._d.memory.context(member, run)
        except Exception as exc:  # memory down or failing: the stage still runs on the artifacts themselves
            log.warning("memory unavailable for %s, using the earlier artifacts: %s", stage.team, exc)
            await self._emit("memory.unavailable", run.id, stage=stage.index, team=stage.team, error=str(exc))
            return fallback, None
        return self._d.memory.recall(member, run, has_items=bool(prior)), packed

    async def _execute_until_decided(
        self,
        run: Run,
        stage: StageRecord,
        lease: Lease,
        member: Team,
        context: list[PriorArtifact],
        recall: Recall,
        packed: str | None,
        operator_notes: Sequence[str] = (),
        *,
        taken: Sequence[str] = (),
        prior: list[PriorArtifact],
    ) -> tuple[Execution, GateDecision, float]:
        """Execute until the gate's verdict is not RETRY (the gate bounds it); also the model seconds.

        The iteration cap counts the executions since this stage last came back from the operator.
        ``taken``: the files earlier stages wrote (a result whose files cannot sit beside them is
        unusable output, sent back like any other). ``prior``: every earlier file of the run; when the
        checks fail in one earlier team's files, that team revises them (``teams.send_back``), they are
        replaced there, and this result is checked again without executing it again."""
        revision = f"Operator feedback on an earlier delivery (run {run.parent_run_id}): {run.feedback}"
        anchored = [*([revision] if run.feedback else []), *operator_notes]
        first_attempt = stage.attempts
        feedback = list(anchored)
        answers: list[str] = []  # clarifications answered so far, kept across re-executions
        failures = 0
        revisions = 0  # revisions asked because the factory's checks failed
        feedback_checks = ""
        model_s = 0.0
        recheck: Execution | None = None  # a result to check again after an earlier team's revision
        rechecks = 0
        while True:
            lease.check()  # the heartbeat found the run taken over: no more paid calls for it
            if recheck is None:
                objective = objective_for(run, stage, member)
                execution = await self._d.runner.execute(
                    member,
                    objective,
                    run.requirement,
                    context,
                    feedback,
                    recall,
                    packed=packed,
                    compact=self._compactor(member),
                    checker=self._checker(run, stage, member, context),
                )
                model_s += execution.model_s
                self._account(stage, execution)
                refuse_clashing_files(execution, taken)
                failures += execution.system_blocked
                decision = decide(
                    execution.result,
                    failures=failures,
                    executions=stage.attempts - first_attempt + 1,
                    limits=limits_of(run, self._d.limits),
                    system_blocked=execution.system_blocked,
                )
            else:  # the same result, checked again over an earlier team's revised files
                execution, recheck, rechecks = recheck, None, rechecks + 1
                decision = GateDecision(Verdict.ADVANCE, "checked again over the earlier team's revised files")
            decision, feedback_checks = await self._check(
                run, stage, member, execution, context, decision,
                revision=revisions + 1, executions=stage.attempts - first_attempt + 1,
            )  # fmt: skip
            revisions += decision.verdict in (Verdict.REVISE, Verdict.SEND_BACK)
            execution.audit = execution_entry(stage, execution, decision)
            if rechecks:  # one execution, checked more than once: each check its own entry
                key, kind, payload = execution.audit
                execution.audit = (f"{key}.recheck.{rechecks}", kind, {**payload, "recheck": rechecks})
            if decision.verdict is not Verdict.ADVANCE:  # an advancing one is recorded with its commit
                await self._d.audit.append(run.id, *execution.audit)
            if decision.verdict is Verdict.RETRY:
                feedback = [
                    *anchored,
                    *answers,
                    f"Your previous answer was unusable ({execution.problem}). Follow the schema exactly.",
                ]
            elif decision.verdict is Verdict.REVISE:
                feedback = [*anchored, *answers, feedback_checks]
            elif decision.verdict is Verdict.SEND_BACK:
                refused = await self._send_back(run, stage, lease, member, context, prior, decision, feedback_checks)
                if refused is not None:
                    return execution, refused, model_s
                recheck = execution  # checked again over the new files: no new execution, no attempt
                continue
            elif decision.verdict is Verdict.CLARIFY:
                outcome = await ask_team(
                    self._d.broker, self._d.store, self._d.audit, self._emit, run, stage, lease, member,
                    execution.result, broker_limits_of(run, self._d.broker),
                )  # fmt: skip
                if not outcome.answered or outcome.reply is None:
                    return execution, unanswered(outcome), model_s
                target = outcome.request.target_team
                answers.append(
                    f"Answer from {target} to your question {outcome.request.question!r}: {outcome.reply.answer}"
                )
                feedback = [*anchored, *answers]
            else:
                return execution, decision, model_s
            stage.attempts += 1
            await self._d.store.save_stage(stage, lease=lease)

    async def _send_back(
        self,
        run: Run,
        stage: StageRecord,
        lease: Lease,
        member: Team,
        context: list[PriorArtifact],
        prior: list[PriorArtifact],
        decision: GateDecision,
        findings: str,
    ) -> GateDecision | None:
        """SEND_BACK: the earlier team revises its files; None when they were kept (check again), else
        the operator's escalation saying why not."""
        owner = decision.context["owners"][0]
        sent = await send_back(
            self._d, self._emit, run, lease, owner, findings, prior,
            limits=limits_of(run, self._d.limits), hold_s=FILES_HELD_S, by=member.slug,
        )  # fmt: skip
        if sent.kept:
            wanted = set(member.reads)
            context[:] = [p for p in prior if p.team in wanted]
            return None
        return GateDecision(
            Verdict.ESCALATE,
            f"checks failed in files of {owner}; {sent.why}: approve to accept the result as it stands, reject"
            f" with a reason to run this team again, or revise the run from {owner} with the findings",
            kind="approval",
            priority="high",
            context=decision.context,
        )

    async def _check(
        self,
        run: Run,
        stage: StageRecord,
        member: Team,
        execution: Execution,
        context: Sequence[PriorArtifact],
        decision: GateDecision,
        *,
        revision: int,
        executions: int,
    ) -> tuple[GateDecision, str]:
        """The verification gate over the confidence gate's ``decision`` (only an advancing one is
        checked): its verdict and, for a revision or a send-back, the findings to send ("" if none).
        The checks' reports go into the execution's audit entry, their figures into the stage record;
        a verifier that fails is reported, never fatal."""
        if decision.verdict is not Verdict.ADVANCE or self._d.verifier is None:
            return decision, ""
        await self._emit("stage.checking", run.id, stage=stage.index, team=stage.team)
        try:
            verification = await self._d.verifier.verify(run, stage, member, execution.result, context)
        except Exception as exc:  # the checks' own failure never fails the stage: it is recorded
            log.warning("checks of %s could not run: %s", stage.team, exc)
            execution.checks = {"error": f"the checks could not run: {exc}"}
            await self._emit("stage.checked", run.id, stage=stage.index, team=stage.team, error=str(exc))
            return decision, ""
        if verification is None:
            return decision, ""
        execution.checks = verification.audit()
        stage.checks = verification.brief()
        await self._emit("stage.checked", run.id, stage=stage.index, team=stage.team, **stage.checks)
        failed = verification.failed
        if not failed:
            return decision, ""
        # Failures in earlier teams' files are theirs to fix (sent back), not this team's.
        others = sorted(verification.failing_owners() - {member.slug})
        findings = [
            {"check": f.check, "artifact": f.artifact, "line": f.line, "message": f.message[:300]}
            for r in failed
            for f in r.findings[:5]
        ][:20]
        verdict = after_checks(
            [r.check for r in failed],
            revisions=revision,
            executions=executions,
            limits=limits_of(run, self._d.limits),
            others=others,
            findings=findings,
        )
        sent_back = verdict.verdict in (Verdict.REVISE, Verdict.SEND_BACK)
        return verdict, verification.feedback() if sent_back else ""

    @staticmethod
    def _account(stage: StageRecord, execution: Execution) -> None:
        account(stage, execution)

    def _compactor(self, member: Team) -> Compactor | None:
        memory = self._d.memory
        if memory is None:
            return None

        async def compact(run_id: str, batch: list[str]) -> str:
            return await memory.compact(member, run_id, batch)

        return compact

    def _checker(
        self, run: Run, stage: StageRecord, member: Team, context: Sequence[PriorArtifact]
    ) -> FileChecker | None:
        """The team's ``check_files`` tool: its checks over files it wrote, beside the earlier files
        it reads (and its other written files), as the verification gate runs them; None without."""
        verifier = self._d.verifier
        if verifier is None or not member.checks:
            return None

        async def check(files: Sequence[Artifact], beside: Sequence[Artifact]) -> list[CheckReport] | None:
            draft = TaskResult(status=TaskStatus.COMPLETE, reasoning="check_files", artifacts=list(files), confidence=0)
            around = [*context, *(PriorArtifact(member.slug, a) for a in beside)]
            verification = await verifier.verify(run, stage, member, draft, around)
            return None if verification is None else verification.reports

        return check

    async def _retain(self, run: Run, stage: StageRecord, result: TaskResult, packed: PackedContext | None) -> None:
        """What the stage learned goes to memory; a memory failure is reported, never fatal."""
        if self._d.memory is None:
            return
        try:
            kept = await self._d.memory.retain(team(stage.team), run, result, packed)
        except Exception as exc:  # memory is derived and recovered on resume: never fail the stage for it
            log.warning("memory retention for %s failed: %s", stage.team, exc)
            await self._emit("memory.retain_failed", run.id, stage=stage.index, team=stage.team, error=str(exc))
            return
        await self._emit("memory.retained", run.id, stage=stage.index, team=stage.team, items=kept)

    async def _complete(
        self,
        run: Run,
        stage: StageRecord,
        result: TaskResult,
        lease: Lease,
        prior: Sequence[PriorArtifact],
        packed: PackedContext | None = None,
        execution: Execution | None = None,
    ) -> None:
        """Commit a stage: its files, its record with its artifacts, its audit entries (the deciding
        execution's, if not recorded yet, then the completion), and its memory."""
        # Retention (extraction, embedding, the memory store) runs beside the stage's commit (it
        # never raises); if the commit fails it is stopped: an uncommitted stage leaves no memory.
        retaining = asyncio.create_task(self._retain(run, stage, result, packed))
        try:
            # Held for sure first (its heartbeat renews it; else a round trip): no commit fences files.
            await self._d.store.hold(lease, for_s=FILES_HELD_S)
            replaced = replaced_by(run, stage, prior, result)
            await asyncio.to_thread(write_artifacts, Path(run.artifacts_dir), result.artifacts)  # off the loop
            stored = [stored_artifact(run, stage, artifact) for artifact in result.artifacts]
            stage.status, stage.finished_at = StageStatus.COMPLETE, now()
            await self._d.store.save_stage(stage, stored, lease=lease)
        except BaseException as exc:
            await _stop(retaining)
            await self._record_unfinished(run, execution, exc)
            raise
        entries = [execution.audit] if execution is not None and execution.audit else []
        # A file an earlier stage wrote and this one replaces is said so, with the hash it replaced.
        extra = {"replaced": replaced} if replaced else {}
        entries.append(completion_entry(stage, {a.name: a.sha256 for a in stored}, **extra))
        try:
            recorded = await self._d.audit.append_many(run.id, entries)  # the execution and its commit, one trip
            await self._anchor(run, recorded[-1])
            # Said as soon as it is recorded: the memory it leaves (which may call a model) follows.
            await self._emit(
                "stage.completed",
                run.id,
                stage=stage.index,
                team=stage.team,
                tokens_in=stage.tokens_in,
                tokens_out=stage.tokens_out,
                confidence=result.confidence,
                replaced={name: f"{old['team']} (stage {old['stage'] + 1})" for name, old in replaced.items()},
            )
        finally:
            await retaining

    async def _anchor(self, run: Run, entry: AuditEntry) -> None:
        """Move the audit's anchor in the bundle's manifest (outside the database) to ``entry``, so a
        chain cut short while the run goes on or waits is noticed by ``factory audit verify``.

        Written beside the run's next steps (the file costs ~0.7 ms), in order after the one before,
        and settled before the run's snapshot and when its drive ends. The stage is committed
        already: a file system that refuses the manifest is reported, not fatal."""
        before = self._anchoring.get(run.id)

        async def write() -> None:
            if before is not None:
                await before
            try:
                await asyncio.to_thread(anchor_manifest, Path(run.artifacts_dir), run.id, entry)
            except (FactoryError, OSError) as exc:
                log.warning("run %s: the audit anchor in the manifest was not moved: %s", run.id, exc)

        self._anchoring[run.id] = asyncio.create_task(write())

    async def _anchored(self, run_id: str) -> None:
        """Wait for the run's manifest anchor to be written, if one is on its way."""
        task = self._anchoring.pop(run_id, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _record_unfinished(self, run: Run, execution: Execution | None, exc: BaseException) -> None:
        """The execution a commit failed after is still audited: the model call it paid for happened.
        Best effort (the database may be what failed); the commit's own error is what the caller sees."""
        if execution is None or execution.audit is None or isinstance(exc, asyncio.CancelledError):
            return
        key, kind, payload = execution.audit
        try:
            await self._d.audit.append(run.id, key, kind, {**payload, "commit_error": str(exc)[:2000]})
        except Exception as failed:  # the commit's error is the one to report
            log.warning("run %s: the execution %s could not be audited either: %s", run.id, key, failed)

    async def _escalate(
        self, run: Run, stage: StageRecord, result: TaskResult, decision: GateDecision, lease: Lease
    ) -> None:
        # The stage (with the result the operator will judge) is stored before its escalation: after
        # a crash in between, the stage waits with no escalation and simply runs again.
        stage.status, stage.finished_at = StageStatus.WAITING_HUMAN, now()
        await self._d.store.save_stage(stage, lease=lease)
        await self._d.store.hold(lease, for_s=FILES_HELD_S)  # the escalation, too, is opened while held
        escalation = await self._d.escalations.open(escalation_for(run.id, stage, result, decision, now(), self._d.sla))
        try:  # still ours? a cancel (or a takeover) in the last round trip would leave it open on a run nobody drives
            await self._d.store.renew(lease)
        except LeaseLost:
            why = "the run was cancelled or taken over as this opened"
            change = Change(status=EscalationStatus.EXPIRED, answer=why, decided_by="factory", decided_at=now())
            await self._d.escalations.apply(escalation.id, escalation.version, change)
            raise
        kind, priority, question = escalation.kind, escalation.priority, escalation.question
        await self._anchor(run, await self._d.audit.append(run.id, *opened_audit(escalation)))
        await self._emit(
            "escalation.opened",
            run.id,
            stage=stage.index,
            id=escalation.id,
            kind=kind.value,
            priority=priority.value,
            team=stage.team,
            question=question,
        )

    async def _fail(self, run: Run, stage: StageRecord, error: str, lease: Lease) -> None:
        stage.status, stage.finished_at = StageStatus.FAILED, now()
        await self._d.store.save_stage(stage, lease=lease)
        await self._d.store.set_run_status(run.id, RunStatus.FAILED, lease=lease)
        await self._d.audit.append(
            run.id,
            f"stage.{stage.index}.failed.{stage.attempts}",
            "stage.failed",
            {"stage": stage.index, "team": stage.team, "error": error},
        )
        await self._emit("run.failed", run.id, stage=stage.index, team=stage.team, error=error)

    async def _finish(self, run: Run, lease: Lease) -> None:
        await self._d.store.renew(lease)  # the snapshot is the run's last word: only its holder writes it
        await self._anchored(run.id)  # the snapshot's manifest comes after every stage's anchor
        artifacts = await snapshot_run(self._d.store, self._d.audit, run)
        await self._d.store.set_run_status(run.id, RunStatus.COMPLETE, lease=lease)
        await self._emit("run.completed", run.id, artifacts=artifacts)

    async def _emit(self, event_type: str, run_id: str, /, **data: Any) -> None:
        await self._d.events.emit(Event(type=event_type, run_id=run_id, data=data, at=now()))


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel a side task whose work lost its purpose (its stage did not commit) and wait for it."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
