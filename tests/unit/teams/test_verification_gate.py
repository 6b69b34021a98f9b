"""The verification gate's transitions through the real engine, on in-memory twins: a verifier twin
says which checks fail (the real checkers and sandbox: tests/integration/test_verification.py)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from teams.base import Run, RunStatus, StageRecord, StageStatus
from teams.gate import GateLimits, Verdict, after_checks
from teams.pipeline import PipelineEngine
from teams.results import TaskResult
from teams.roster import Team
from teams.runner import PriorArtifact
from teams.verification import Verification
from tests.unit.teams.test_gate import Harness
from verify.base import CheckReport, Finding, Outcome
from verify.summary import figures


def report(check: str, outcome: Outcome, artifact: str = "backend/app.py") -> CheckReport:
    findings = [Finding(check=check, artifact=artifact, message=f"{check} found a problem", line=3)]
    return CheckReport(
        check=check,
        outcome=outcome,
        artifacts=[artifact],
        findings=findings if outcome is Outcome.FAILED else [],
    )


class VerifierTwin:
    """Answers each verification of ``team`` from a queue of outcomes (then: all passed); ``more``:
    queues of other teams."""

    def __init__(
        self,
        team: str,
        queue: Sequence[list[CheckReport] | Exception],
        owners: dict[str, str] | None = None,
        more: dict[str, Sequence[list[CheckReport]]] | None = None,
    ) -> None:
        self.queues: dict[str, deque[list[CheckReport] | Exception]] = {team: deque(queue)}
        self.queues |= {slug: deque(q) for slug, q in (more or {}).items()}
        self.owners = owners or {}
        self.seen: list[str] = []

    async def verify(
        self, run: Run, stage: StageRecord, member: Team, result: TaskResult, context: Sequence[PriorArtifact]
    ) -> Verification | None:
        self.seen.append(member.slug)
        reports = [report("python-syntax", Outcome.PASSED)]
        queue = self.queues.get(member.slug)
        if queue:
            item = queue.popleft()
            if isinstance(item, Exception):
                raise item
            reports = item
        names = [a.name for a in result.artifacts]
        owners = {n: member.slug for n in names} | self.owners
        return Verification(reports, figures(reports, names), owners)


async def executions_of(h: Harness, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload) for e in await h.audit.entries(run_id) if e.kind == "stage.execution"]


def harness(tmp: Path, verifier: VerifierTwin, limits: GateLimits | None = None) -> Harness:
    h = Harness(tmp, {}, limits)
    h.engine = PipelineEngine(replace(h.engine.deps, verifier=verifier))
    return h


async def test_failed_checks_send_the_result_back_once_and_the_revision_passes(tmp_path: Path) -> None:
    twin = VerifierTwin("backend-engineering", [[report("python-syntax", Outcome.FAILED)]])
    h = harness(tmp_path, twin)
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE
    backend = next(s for s in out.stages if s.team == "backend-engineering")
    assert backend.attempts == 2 and backend.checks is not None and backend.checks["failed"] == 0
    executions = await executions_of(h, out.run.id)
    verdicts = [e["gate"]["verdict"] for e in executions if e["team"] == "backend-engineering"]
    assert verdicts == ["revise", "advance"]
    first = next(e for e in executions if e["team"] == "backend-engineering")
    assert first["checks"]["reports"][0]["findings"][0]["message"] == "python-syntax found a problem"
    assert "stage.checked" in h.events


async def test_checks_failing_past_the_budget_ask_the_operator_with_the_findings(tmp_path: Path) -> None:
    failing = [report("pytest", Outcome.FAILED, "qa/test_app.py")]
    twin = VerifierTwin("qa-engineering", [failing] * 5, owners={})
    h = harness(tmp_path, twin, GateLimits(check_revisions=1))
    out = await h.run()
    assert out.run.status is RunStatus.WAITING_HUMAN
    qa = next(s for s in out.stages if s.team == "qa-engineering")
    assert qa.status is StageStatus.WAITING_HUMAN and qa.attempts == 2
    [esc] = out.escalations
    assert (esc.kind.value, esc.priority.value) == ("approval", "high")
    assert "pytest" in esc.question and "after 1 revision" in esc.question
    assert esc.context["findings"][0]["artifact"] == "qa/test_app.py"


async def test_failures_in_an_earlier_teams_files_go_back_to_that_team_and_its_fix_is_kept(tmp_path: Path) -> None:
    failing = [report("pytest", Outcome.FAILED, "backend/app.py")]
    twin = VerifierTwin("qa-engineering", [failing], owners={"backend/app.py": "backend-engineering"})
    h = harness(tmp_path, twin)
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE and not out.escalations
    stages = {s.team: s for s in out.stages}
    assert stages["backend-engineering"].attempts == 2  # it ran again with the findings
    assert stages["qa-engineering"].attempts == 1  # QA's result was checked again, not executed again
    entries = [json.loads(e.payload) | {"kind": e.kind, "key": e.key} for e in await h.audit.entries(out.run.id)]
    revised = [e for e in entries if e["kind"] == "stage.revised"]
    assert (
        len(revised) == 1 and revised[0]["team"] == "backend-engineering" and "qa-engineering" in revised[0]["because"]
    )
    qa = [e for e in entries if e["kind"] == "stage.execution" and e["team"] == "qa-engineering"]
    assert [e["gate"]["verdict"] for e in qa] == ["send_back", "advance"] and qa[1]["key"].endswith(".recheck.1")
    assert twin.seen.count("backend-engineering") == 2 and "stage.revised" in h.events


async def test_an_earlier_teams_revision_that_fails_its_own_checks_goes_to_the_operator(tmp_path: Path) -> None:
    failing = [report("pytest", Outcome.FAILED, "backend/app.py")]
    twin = VerifierTwin(
        "qa-engineering",
        [failing],
        owners={"backend/app.py": "backend-engineering"},
        more={"backend-engineering": [[report("python-syntax", Outcome.PASSED)], [report("ruff", Outcome.FAILED)]]},
    )
    h = harness(tmp_path, twin)
    out = await h.run()
    [esc] = out.escalations
    assert esc.team == "qa-engineering" and "backend-engineering" in esc.question and "not kept" in esc.question
    assert esc.context["owners"] == ["backend-engineering"]
    assert not [e for e in await h.audit.entries(out.run.id) if e.kind == "stage.revised"]


async def test_failures_in_several_earlier_teams_files_go_to_the_operator(tmp_path: Path) -> None:
    failing = [report("pytest", Outcome.FAILED, "backend/app.py"), report("ruff", Outcome.FAILED, "analysis/scope.md")]
    owners = {"backend/app.py": "backend-engineering", "analysis/scope.md": "business-analysis"}
    h = harness(tmp_path, VerifierTwin("qa-engineering", [failing], owners=owners))
    out = await h.run()
    [esc] = out.escalations
    assert esc.context["owners"] == ["backend-engineering", "business-analysis"]
    assert next(s for s in out.stages if s.team == "qa-engineering").attempts == 1  # no pointless revision


async def test_a_verifier_that_fails_is_recorded_and_the_stage_goes_on(tmp_path: Path) -> None:
    twin = VerifierTwin("backend-engineering", [RuntimeError("scratch disk full")])
    h = harness(tmp_path, twin)
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE
    executions = await executions_of(h, out.run.id)
    backend = next(e for e in executions if e["team"] == "backend-engineering")
    assert "scratch disk full" in backend["checks"]["error"]


def test_after_checks_bounds_the_revisions_by_the_iteration_cap() -> None:
    limits = GateLimits(check_revisions=5, iteration_cap=2)
    assert after_checks(["ruff"], revisions=1, executions=1, limits=limits).verdict is Verdict.REVISE
    assert after_checks(["ruff"], revisions=2, executions=2, limits=limits).verdict is Verdict.ESCALATE
    none = GateLimits(check_revisions=0)
    assert after_checks(["ruff"], revisions=1, executions=1, limits=none).verdict is Verdict.ESCALATE
