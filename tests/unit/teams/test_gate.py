"""Gate transitions through the real engine, on in-memory twins, with the scripted model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.in_memory import InMemoryBroker
from factory.errors import InputError, UnknownTeam
from hitl.in_memory import InMemoryEscalationQueue
from memory.audit_memory import InMemoryAuditLog
from observability.events import LocalEventBus
from routing.ledger import RecordingModel
from routing.scripted import ScriptedModel
from teams.base import RunStatus, StageStatus
from teams.gate import GateLimits, Verdict, decide
from teams.pipeline import PipelineDeps, PipelineEngine, RunOutcome
from teams.results import TaskResult, blocked
from teams.runner import TeamRunner
from teams.schema import SchemaBounds
from teams.store_memory import InMemoryRunStore

PHASE1 = ["business-analysis", "solution-architecture", "backend-engineering", "qa-engineering", "documentation"]


def result(status: str = "COMPLETE", confidence: float = 0.9, **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "reasoning": "scripted",
        "blockers": extra.pop("blockers", []),
        "assumptions_made": [],
        "verified_facts": [],
        "clarification_needed": extra.pop("clarification_needed", None),
        "artifacts": extra.pop("artifacts", []),
        "confidence": confidence,
    }


class Harness:
    def __init__(
        self,
        tmp: Path,
        script: dict[str, Any],
        limits: GateLimits | None = None,
        broker: InMemoryBroker | None = None,
    ) -> None:
        self.store = InMemoryRunStore()
        self.audit = InMemoryAuditLog()
        self.escalations = InMemoryEscalationQueue()
        self.bus = LocalEventBus()
        self.events: list[str] = []
        self.bus.subscribe(lambda e: self.events.append(e.type))
        self.broker = broker
        self.runner = runner = TeamRunner(
            RecordingModel(ScriptedModel(script), self.store),
            timeout_s=5,
            max_tokens=512,
            bounds=SchemaBounds(),
            budget_chars=4000,
        )
        self.engine = PipelineEngine(
            PipelineDeps(
                store=self.store,
                audit=self.audit,
                escalations=self.escalations,
                runner=runner,
                events=self.bus,
                limits=limits or GateLimits(),
                runs_dir=tmp,
                broker=broker,
            )
        )

    async def run(self, pipeline: str = "phase1") -> RunOutcome:
        return await self.engine.start("Build a URL shortener with an HTTP API.", pipeline)


async def test_all_complete_runs_every_stage_and_writes_the_bundle(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE
    assert [s.team for s in out.stages] == PHASE1
    assert all(s.status is StageStatus.COMPLETE and s.attempts == 1 for s in out.stages)
    bundle = Path(out.run.artifacts_dir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {a["name"] for a in manifest["artifacts"]} >= {"analysis/scope.md", "backend/app.py", "docs/README.md"}
    assert (bundle / "backend" / "app.py").is_file()
    assert out.audit.intact and manifest["audit_head_sha256"] == out.audit.head_sha256
    assert len(h.store.usage_rows) == 5 and all(u.ok for u in h.store.usage_rows)
    assert h.events.count("stage.completed") == 5 and h.events[-1] == "run.completed"


async def test_later_stages_read_earlier_artifacts(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    await h.run()
    [arch] = [r for r in h.store.usage_rows if r.team == "solution-architecture"]
    [analysis] = [r for r in h.store.usage_rows if r.team == "business-analysis"]
    assert arch.tokens_in > analysis.tokens_in  # the scope was added to the prompt


async def test_blocked_opens_an_escalation_and_waits(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"teams": {"backend-engineering": [result("BLOCKED", 0.2, blockers=["no database chosen"])]}})
    out = await h.run()
    assert out.run.status is RunStatus.WAITING_HUMAN
    statuses = [s.status for s in out.stages]
    assert statuses[:2] == [StageStatus.COMPLETE] * 2
    assert statuses[2] is StageStatus.WAITING_HUMAN and statuses[3:] == [StageStatus.PENDING] * 2
    [esc] = out.escalations
    assert (esc.kind.value, esc.priority.value, esc.team) == ("blocked", "high", "backend-engineering")
    assert "no database chosen" in esc.question and esc.context["blockers"] == ["no database chosen"]


async def test_low_confidence_becomes_a_medium_approval(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"teams": {"business-analysis": [result(confidence=0.3)]}})
    out = await h.run()
    [esc] = out.escalations
    assert (esc.kind.value, esc.priority.value) == ("approval", "medium")
    assert out.run.status is RunStatus.WAITING_HUMAN


async def test_clarification_without_broker_becomes_a_clarification_escalation(tmp_path: Path) -> None:
    ask = result("NEEDS_CLARIFICATION", 0.5, clarification_needed={"target_team": "api-design", "question": "REST?"})
    h = Harness(tmp_path, {"teams": {"solution-architecture": [ask]}})
    out = await h.run()
    [esc] = out.escalations
    assert (esc.kind.value, esc.question, esc.context["target_team"]) == ("clarification", "REST?", "api-design")


async def test_malformed_output_is_repaired_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"teams": {"qa-engineering": ["this is not json"]}})
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE
    qa = next(s for s in out.stages if s.team == "qa-engineering")
    assert qa.attempts == 1
    purposes = [u.purpose for u in h.store.usage_rows if u.team == "qa-engineering"]
    assert purposes == ["objective", "repair"]


async def test_unrepairable_output_is_retried_then_escalated(tmp_path: Path) -> None:
    garbage = ["{", '{"status": 1}'] * 3  # three executions, each with its repair, all invalid
    h = Harness(tmp_path, {"teams": {"business-analysis": garbage}}, GateLimits(retry_budget=2))
    out = await h.run()
    stage = out.stages[0]
    assert stage.attempts == 3 and stage.status is StageStatus.WAITING_HUMAN
    [esc] = out.escalations
    assert esc.kind.value == "blocked" and "unusable after 3 attempts" in esc.question
    assert stage.result is not None and stage.result.status.value == "BLOCKED"


async def test_retry_recovers_when_a_later_attempt_is_valid(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"teams": {"documentation": ["nope", "still nope"]}})
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE
    assert out.stages[-1].attempts == 2


async def test_audit_records_every_execution_and_verifies(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"teams": {"documentation": ["nope", "still nope"]}})
    out = await h.run()
    kinds = [e.kind for e in await h.audit.entries(out.run.id)]
    assert kinds[0] == "run.created" and kinds[-1] == "run.snapshot"
    assert kinds.count("stage.execution") == 6  # five stages, one of them twice
    assert (await h.audit.verify(out.run.id)).intact


async def test_custom_pipeline_keeps_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    out = await h.run("documentation,business-analysis")
    assert [s.team for s in out.stages] == ["documentation", "business-analysis"]


@pytest.mark.parametrize(
    ("pipeline", "error"),
    [
        ("nope", UnknownTeam),
        ("business-analysis,,documentation", InputError),
        ("", InputError),
        ("qa-engineering,qa-engineering", InputError),
    ],
)
async def test_bad_pipelines_are_refused_before_anything_is_written(tmp_path: Path, pipeline: str, error: type) -> None:
    h = Harness(tmp_path, {})
    with pytest.raises(error):
        await h.run(pipeline)
    assert h.store._runs == {} and not any(tmp_path.iterdir())  # noqa: ASYNC240 (a test's tmp dir)


@pytest.mark.parametrize("requirement", ["", "   \n\t", "x" * (64 * 1024 + 1), "a\x00b"])
async def test_bad_requirements_are_refused_before_anything_is_written(tmp_path: Path, requirement: str) -> None:
    h = Harness(tmp_path, {})
    with pytest.raises(InputError):
        await h.engine.start(requirement, "phase1")
    assert h.store._runs == {}


def test_gate_decisions() -> None:
    limits = GateLimits(confidence_floor=0.6, retry_budget=2, iteration_cap=6)
    ok = TaskResult.model_validate(result(confidence=0.6))
    assert decide(ok, failures=0, executions=1, limits=limits, system_blocked=False).verdict is Verdict.ADVANCE
    sys_blocked = blocked("bad output")
    assert decide(sys_blocked, failures=2, executions=2, limits=limits, system_blocked=True).verdict is Verdict.RETRY
    assert decide(sys_blocked, failures=3, executions=3, limits=limits, system_blocked=True).verdict is Verdict.ESCALATE
    assert decide(sys_blocked, failures=1, executions=6, limits=limits, system_blocked=True).verdict is Verdict.ESCALATE
    ask = TaskResult.model_validate(
        result("NEEDS_CLARIFICATION", clarification_needed={"target_team": "api-design", "question": "?"})
    )
    assert decide(ask, failures=0, executions=1, limits=limits, system_blocked=False).verdict is Verdict.CLARIFY
    assert decide(ask, failures=0, executions=6, limits=limits, system_blocked=False).verdict is Verdict.ESCALATE
    floor_above_one = GateLimits(confidence_floor=1.5)
    top = TaskResult.model_validate(result(confidence=1.0))
    assert decide(top, failures=0, executions=1, limits=floor_above_one, system_blocked=False).kind == "approval"
