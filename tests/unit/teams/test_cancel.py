"""Cancelling a run through the real engine, on the in-memory twins, with the scripted model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from factory.errors import DecisionConflict, DecisionRefused, LeaseLost, RunFinished, RunNotFound
from hitl.desk import DecisionDesk
from observability.base import Event
from routing.scripted import ScriptedModel
from teams.base import Run, RunStatus, StageStatus
from teams.snapshot import verify_run
from tests.unit.teams.test_gate import Harness, result

BLOCKED = {"teams": {"backend-engineering": [result("BLOCKED", 0.2, blockers=["no database chosen"])]}}


async def test_cancelling_a_waiting_run_closes_its_escalations(tmp_path: Path) -> None:
    h = Harness(tmp_path, BLOCKED)
    waiting = await h.run()
    [escalation] = waiting.escalations
    seen: list[Event] = []
    h.bus.subscribe(seen.append)

    run = await h.engine.cancel(waiting.run.id, by=" ana ", reason=" wrong requirement ")
    assert run.status is RunStatus.CANCELLED
    stages = await h.store.stages(run.id)
    assert [s.status for s in stages] == [StageStatus.COMPLETE] * 2 + [StageStatus.FAILED] + [StageStatus.PENDING] * 2
    assert stages[2].finished_at is not None and stages[2].finished_at > stages[1].finished_at  # type: ignore[operator]
    assert await h.escalations.list_open() == []
    closed = await h.escalations.get(escalation.id)
    assert closed is not None and (closed.status.value, closed.answer, closed.decided_by) == (
        "expired", "wrong requirement", "ana"
    )  # fmt: skip

    report = await h.audit.verify(run.id)
    assert report.intact
    entries = await h.audit.entries(run.id)
    assert entries[-1].kind == "run.cancelled"
    assert json.loads(entries[-1].payload) == {
        "by": "ana", "reason": "wrong requirement", "stage": 2, "team": "backend-engineering",
        "escalations": [escalation.id],
    }  # fmt: skip
    manifest = json.loads((Path(run.artifacts_dir) / "manifest.json").read_text())
    assert (manifest["audit_head_sha256"], manifest["audit_entries"]) == (entries[-1].sha256, len(entries))
    assert (await verify_run(h.audit, run)).intact  # the chain, and the anchor outside the database
    decided = json.loads(entries[-2].payload)
    assert (entries[-2].kind, decided["id"], decided["decision"]) == ("escalation.decided", escalation.id, "expired")
    assert [e.type for e in seen] == ["escalation.decided", "run.cancelled"]
    assert seen[-1].data == {
        "by": "ana", "reason": "wrong requirement", "stage": 2, "team": "backend-engineering",
        "escalations": [escalation.id],
    }  # fmt: skip

    desk = DecisionDesk(h.escalations, h.audit, h.bus)
    with pytest.raises(DecisionConflict, match=f"{escalation.id} was already expired by ana"):
        await desk.answer(escalation.id, "PostgreSQL", by="bo")
    again = await h.engine.drive(run.id)  # a resume leaves it as it is
    assert again.run.status is RunStatus.CANCELLED and again.timings == []


async def test_cancel_refuses_unknown_finished_and_cancelled_runs(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    with pytest.raises(RunNotFound, match="no run 'run-nope'"):
        await h.engine.cancel("run-nope", by="ana")
    complete = await h.run()
    with pytest.raises(RunFinished, match=f"run {complete.run.id} is already complete; nothing to cancel"):
        await h.engine.cancel(complete.run.id, by="ana")
    h = Harness(tmp_path, BLOCKED)
    waiting = await h.run()
    await h.engine.cancel(waiting.run.id, by="ana")  # no reason: optional
    with pytest.raises(RunFinished, match="is already cancelled; nothing to cancel"):
        await h.engine.cancel(waiting.run.id, by="bo", reason="twice")
    [entry] = [json.loads(e.payload) for e in await h.audit.entries(waiting.run.id) if e.kind == "run.cancelled"]
    assert (entry["by"], entry["reason"]) == ("ana", None)


@pytest.mark.parametrize(("by", "reason", "needle"), [("  ", None, "no author"), ("ana", "x\x00y", "reason")])
async def test_cancel_checks_who_and_why_before_anything(tmp_path: Path, by: str, reason: str, needle: str) -> None:
    h = Harness(tmp_path, BLOCKED)
    waiting = await h.run()
    with pytest.raises(DecisionRefused, match=needle):
        await h.engine.cancel(waiting.run.id, by=by, reason=reason)
    assert (await h.store.get_run(waiting.run.id)).status is RunStatus.WAITING_HUMAN  # type: ignore[union-attr]
    assert len(await h.escalations.list_open()) == 1


async def _started(h: Harness, index: int) -> Run:
    """The run whose stage ``index`` is running (bounded wait)."""
    for _ in range(500):
        for run in await h.store.recent_runs(limit=1):
            stages = await h.store.stages(run.id)
            if len(stages) > index and stages[index].status is StageStatus.RUNNING:
                return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"stage {index} never started")


async def test_a_run_cancelled_while_driven_stops_its_driver(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    h.engine._d.runner._model._inner = ScriptedModel(latency_s=0.3)  # type: ignore[attr-defined]
    driving = asyncio.create_task(h.run())
    run = await _started(h, 1)
    cancelled = await h.engine.cancel(run.id, by="ana", reason="stop")
    assert cancelled.status is RunStatus.CANCELLED
    with pytest.raises(LeaseLost, match=f"no longer holds run {run.id}"):
        await driving  # its model call came back: the commit of the stage was refused
    stages = await h.store.stages(run.id)
    assert [s.status for s in stages][:3] == [StageStatus.COMPLETE, StageStatus.FAILED, StageStatus.PENDING]
    assert stages[1].result is None and not [a for a in await h.store.artifacts(run.id) if a.stage_index == 1]
    assert (await h.store.get_run(run.id)).status is RunStatus.CANCELLED  # type: ignore[union-attr]
    kinds = [e.kind for e in await h.audit.entries(run.id)]
    assert "stage.complete" not in kinds[kinds.index("run.cancelled") :]
    assert (await h.engine.drive(run.id)).run.status is RunStatus.CANCELLED  # nothing runs it again


async def test_two_cancels_at_once_one_wins(tmp_path: Path) -> None:
    h = Harness(tmp_path, BLOCKED)
    waiting = await h.run()
    outcomes = await asyncio.gather(
        h.engine.cancel(waiting.run.id, by="ana", reason="a"),
        h.engine.cancel(waiting.run.id, by="bo", reason="b"),
        return_exceptions=True,
    )
    [won] = [o for o in outcomes if isinstance(o, Run)]
    [lost] = [o for o in outcomes if isinstance(o, Exception)]
    assert won.status is RunStatus.CANCELLED and isinstance(lost, RunFinished) and "already cancelled" in str(lost)
    cancels = [e for e in await h.audit.entries(waiting.run.id) if e.kind == "run.cancelled"]
    assert len(cancels) == 1
