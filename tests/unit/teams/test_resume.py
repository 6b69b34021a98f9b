"""Resuming a run after a crash: completed stages are kept, the crashed one re-runs, nothing is duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

from routing.base import ChatRequest, ChatResponse
from routing.scripted import ScriptedModel
from teams.base import RunStatus, StageStatus
from tests.unit.teams.test_gate import Harness


class Crash(Exception):
    pass


class CrashingModel(ScriptedModel):
    """Dies (like a killed process) when it reaches one team."""

    def __init__(self, team: str) -> None:
        super().__init__()
        self.team = team

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        if request.team == self.team:
            raise Crash("process killed")
        return await super().complete(request, timeout_s=timeout_s)


async def test_resume_continues_from_the_last_committed_stage(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    h.engine._d.runner._model._inner = CrashingModel("backend-engineering")  # type: ignore[attr-defined]
    with pytest.raises(Crash):
        await h.run()
    [run_id] = list(h.store._runs)
    stages = await h.store.stages(run_id)
    assert [s.status for s in stages[:3]] == [StageStatus.COMPLETE, StageStatus.COMPLETE, StageStatus.RUNNING]
    before = await h.audit.entries(run_id)

    h.engine._d.runner._model._inner = ScriptedModel()  # type: ignore[attr-defined]  # "the next process"
    out = await h.engine.drive(run_id)
    assert out.run.status is RunStatus.COMPLETE
    assert [s.attempts for s in out.stages] == [1, 1, 2, 1, 1]  # the crashed attempt is on record
    by_team = [u.team for u in h.store.usage_rows]
    assert by_team.count("business-analysis") == 1 and by_team.count("solution-architecture") == 1
    after = await h.audit.entries(run_id)
    assert after[: len(before)] == before and out.audit.intact
    assert [e.kind for e in after].count("stage.complete") == 5
    assert len({e.key for e in after}) == len(after)

    again = await h.engine.drive(run_id)  # resuming a complete run changes nothing
    assert again.run.status is RunStatus.COMPLETE and len(await h.audit.entries(run_id)) == len(after)


async def test_resume_leaves_a_stage_waiting_on_a_human_alone(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"teams": {"qa-engineering": [{"status": "COMPLETE", "reasoning": "r", "confidence": 0.1}]}})
    out = await h.run()
    assert out.run.status is RunStatus.WAITING_HUMAN
    calls = len(h.store.usage_rows)
    again = await h.engine.drive(out.run.id)
    assert again.run.status is RunStatus.WAITING_HUMAN and len(h.store.usage_rows) == calls
    assert [e.id for e in again.escalations] == [e.id for e in out.escalations]
