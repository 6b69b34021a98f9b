"""A run waiting on a human resumes from the operator's decision (DESIGN §5, §9), on the twins."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from factory.errors import RunBusy
from hitl.base import EscalationKind, Priority
from hitl.desk import DecisionDesk, LowRisk
from routing.base import ChatRequest, ChatResponse
from routing.budget import BudgetedModel, BudgetLimits
from routing.ledger import RecordingModel
from routing.scripted import ScriptedModel
from teams.base import RunStatus, StageStatus
from teams.gate import GateLimits
from teams.pipeline import MAX_RESUMES, PipelineEngine
from tests.unit.teams.test_gate import Harness, result

LOW = result(confidence=0.3)  # COMPLETE below the floor: an approval escalation


class PromptSpy(ScriptedModel):
    """The scripted model, keeping every prompt it was sent per team."""

    def __init__(self, script: dict[str, Any]) -> None:
        super().__init__(script)
        self.prompts: dict[str, list[str]] = {}

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        self.prompts.setdefault(request.team or "", []).append(request.messages[-1].content)
        return await super().complete(request, timeout_s=timeout_s)


def harness(tmp: Path, script: dict[str, Any], limits: GateLimits | None = None) -> tuple[Harness, PromptSpy, Any]:
    h = Harness(tmp, {}, limits)
    spy = PromptSpy(script)
    h.runner._model = RecordingModel(spy, h.store)  # type: ignore[attr-defined]
    return h, spy, DecisionDesk(h.escalations, h.audit, h.bus)


async def test_approving_accepts_the_result_as_it_stands(tmp_path: Path) -> None:
    h, spy, desk = harness(tmp_path, {"teams": {"solution-architecture": [LOW]}})
    out = await h.run()
    assert out.run.status is RunStatus.WAITING_HUMAN
    [waiting] = out.escalations
    assert (waiting.kind.value, waiting.team) == ("approval", "solution-architecture")
    assert "approve" in waiting.context["choices"] and "reject" in waiting.context["choices"]
    await desk.approve(waiting.id, by="ana", notes="good enough")
    done = await h.engine.drive(out.run.id)
    assert done.run.status is RunStatus.COMPLETE
    assert len(spy.prompts["solution-architecture"]) == 1  # accepted, not executed again
    kinds = [e.kind for e in await h.audit.entries(out.run.id)]
    assert kinds.count("escalation.decided") == 1  # the desk's entry; resuming does not add a second
    assert kinds.index("escalation.decided") < kinds.index("stage.complete", kinds.index("escalation.decided"))


async def test_rejecting_sends_the_stage_back_with_the_reason(tmp_path: Path) -> None:
    h, spy, desk = harness(tmp_path, {"teams": {"backend-engineering": [LOW]}})
    out = await h.run()
    await desk.reject(out.escalations[0].id, reason="the API lacks a click counter endpoint", by="ana")
    assert (await h.engine.drive(out.run.id)).run.status is RunStatus.COMPLETE
    first, second = spy.prompts["backend-engineering"]
    assert "click counter endpoint" not in first
    assert "The operator rejected your previous result: the API lacks a click counter endpoint" in second
    stages = await h.store.stages(out.run.id)
    assert stages[2].attempts == 2 and stages[2].status is StageStatus.COMPLETE


async def test_an_answer_reaches_the_blocked_objective_and_earlier_answers_stay(tmp_path: Path) -> None:
    blocked = result("BLOCKED", blockers=["which database?"])
    h, spy, desk = harness(tmp_path, {"teams": {"qa-engineering": [blocked, blocked]}})
    out = await h.run()
    await desk.answer(out.escalations[0].id, "PostgreSQL 16", by="ana")
    again = await h.engine.drive(out.run.id)
    assert again.run.status is RunStatus.WAITING_HUMAN
    await desk.answer(again.escalations[0].id, "tests run in CI on every push", by="bo")
    assert (await h.engine.drive(out.run.id)).run.status is RunStatus.COMPLETE
    third = spy.prompts["qa-engineering"][2]
    assert "PostgreSQL 16" in third and "tests run in CI on every push" in third


async def test_the_iteration_cap_restarts_after_a_human_decision(tmp_path: Path) -> None:
    blocked = result("BLOCKED", blockers=["unclear"])
    limits = GateLimits(iteration_cap=2, retry_budget=0)
    h, spy, desk = harness(tmp_path, {"teams": {"documentation": [blocked] * 3}}, limits)
    out = await h.run()
    for _ in range(3):  # each answer buys a fresh execution, never a refusal for the cap
        await desk.answer(out.escalations[0].id, "carry on", by="ana")
        out = await h.engine.drive(out.run.id)
    assert out.run.status is RunStatus.COMPLETE and len(spy.prompts["documentation"]) == 4


async def test_a_spent_budget_waits_on_the_operator(tmp_path: Path) -> None:
    h, spy, desk = harness(tmp_path, {})
    grants = 0

    async def granted(run_id: str) -> int:
        return grants

    budgeted = BudgetedModel(h.runner._model, h.store, BudgetLimits(run_tokens=900), granted)  # type: ignore[attr-defined]
    h.runner._model = budgeted  # type: ignore[attr-defined]
    out = await h.run()
    assert out.run.status is RunStatus.WAITING_HUMAN
    [budget] = out.escalations
    assert (budget.kind.value, budget.priority.value) == ("budget", "high")
    assert "tokens of its 900-token budget" in budget.question
    done = sum(s.status is StageStatus.COMPLETE for s in out.stages)
    await desk.approve(budget.id, by="ana")
    grants = 1
    more = await h.engine.drive(out.run.id)
    assert sum(s.status is StageStatus.COMPLETE for s in more.stages) > done
    assert more.run.status is RunStatus.WAITING_HUMAN  # the doubled budget ran out too: stop the run
    await desk.reject(more.escalations[0].id, reason="enough spent on this one", by="ana")
    stopped = await h.engine.drive(out.run.id)
    assert stopped.run.status is RunStatus.CANCELLED
    assert "run.cancelled" in [e.kind for e in await h.audit.entries(out.run.id)]
    assert (await h.engine.drive(out.run.id)).run.status is RunStatus.CANCELLED  # and stays so


async def test_one_driver_per_run(tmp_path: Path) -> None:
    h, _spy, _desk = harness(tmp_path, {"teams": {"documentation": [LOW]}})
    out = await h.run()
    async with h.store.lease(out.run.id):
        with pytest.raises(RunBusy, match="being driven"):
            await h.engine.drive(out.run.id)
    assert (await h.engine.drive(out.run.id)).run.status is RunStatus.WAITING_HUMAN  # released again


async def test_a_floor_above_one_makes_every_stage_an_approval(tmp_path: Path) -> None:
    h, spy, desk = harness(tmp_path, {}, GateLimits(confidence_floor=1.01))
    out = await h.run()
    approved = []
    while out.run.status is RunStatus.WAITING_HUMAN:
        [waiting] = out.escalations
        assert waiting.kind.value == "approval" and waiting.priority.value == "medium"
        approved.append((await desk.approve(waiting.id, by="lead")).team)
        out = await h.engine.drive(out.run.id)
    assert out.run.status is RunStatus.COMPLETE
    assert approved == [s.team for s in out.stages] and len(approved) == 5
    assert sum(len(p) for p in spy.prompts.values()) == 5  # approving never re-runs a stage


class Crash(Exception):
    """A process killed at that point."""


class CrashOnce:
    """Wraps a store or queue: the named method dies once (once armed, after ``after`` calls go
    through), as a killed process would."""

    def __init__(self, inner: Any, method: str, *, after: int = 0) -> None:
        self._inner, self._method, self.armed, self._after = inner, method, False, after

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        async def once(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                if self._after:
                    self._after -= 1
                else:
                    self.armed = False
                    raise Crash(name)
            return await attr(*args, **kwargs)

        return once


async def test_an_approval_after_a_crash_never_accepts_an_earlier_attempts_result(tmp_path: Path) -> None:
    good = result(confidence=0.95)
    good["reasoning"] = "third attempt"
    h, spy, desk = harness(tmp_path, {"teams": {"qa-engineering": [LOW, LOW, good]}})
    crashing = CrashOnce(h.escalations, "open")
    h.engine = PipelineEngine(replace(h.engine.deps, escalations=crashing))
    out = await h.run()
    await desk.reject(out.escalations[0].id, reason="too shallow", by="ana")
    crashing.armed = True  # the second attempt's escalation is never stored: the process dies first
    with pytest.raises(Crash):
        await h.engine.drive(out.run.id)
    again = await h.engine.drive(out.run.id)  # no escalation to decide: the stage simply runs again
    assert again.run.status is RunStatus.COMPLETE
    qa = (await h.store.stages(out.run.id))[3]
    assert qa.attempts == 3 and qa.result is not None and qa.result.reasoning == "third attempt"


async def test_a_stage_that_kills_every_process_ends_failed_not_in_a_loop(tmp_path: Path) -> None:
    h, _spy, _desk = harness(tmp_path, {}, GateLimits(iteration_cap=1))

    class Killer(ScriptedModel):
        async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
            if request.team == "qa-engineering":
                raise Crash("the model call kills the process")
            return await super().complete(request, timeout_s=timeout_s)

    h.runner._model = RecordingModel(Killer(), h.store)  # type: ignore[attr-defined]
    with pytest.raises(Crash):
        await h.run()
    [run_id] = list(h.store._runs)
    for _ in range(MAX_RESUMES - 1):  # each resume dies again, as a worker restarting would see
        with pytest.raises(Crash):
            await h.engine.drive(run_id)
    out = await h.engine.drive(run_id)
    assert out.run.status is RunStatus.FAILED and "executed 5 times across resumes" in (out.error or "")


async def test_a_completion_a_crash_kept_off_the_audit_is_recorded_on_resume(tmp_path: Path) -> None:
    h, _spy, _desk = harness(tmp_path, {})
    crashing = CrashOnce(h.audit, "append_many", after=1)  # the run's creation is recorded
    h.engine = PipelineEngine(replace(h.engine.deps, audit=crashing))
    crashing.armed = True  # the first stage's commit is stored, its audit entries are not
    with pytest.raises(Crash):
        await h.run()
    [run_id] = list(h.store._runs)
    out = await h.engine.drive(run_id)
    assert out.run.status is RunStatus.COMPLETE and out.audit.intact
    entries = await h.audit.entries(run_id)
    completions = [json.loads(e.payload) for e in entries if e.kind == "stage.complete"]
    assert len(completions) == 5 and completions[0].get("recovered") is True
    assert completions[0]["artifacts"]  # the hashes of what was committed


async def test_batch_approval_never_decides_what_needs_an_answer(tmp_path: Path) -> None:
    blocked = result("BLOCKED", blockers=["which database?"])
    h, _spy, _desk = harness(tmp_path, {"teams": {"qa-engineering": [blocked]}})
    out = await h.run()
    anything = LowRisk(kinds=frozenset(EscalationKind), priorities=frozenset(Priority))
    desk = DecisionDesk(h.escalations, h.audit, h.bus, low_risk=anything)
    batch = await desk.batch_approve([out.escalations[0].id], by="ana")
    assert batch.approved == [] and "needs an answer" in batch.refused[0][1]
