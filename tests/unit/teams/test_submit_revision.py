"""Submitting a revision without driving it: the same checks as ``revise``, a run a worker then drives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from factory.errors import FactoryError
from teams.base import RunStatus, StageStatus
from teams.revision import revise, submit_revision
from tests.unit.teams.test_gate import Harness

LOW_ARCHITECTURE = {"teams": {"solution-architecture": [{"status": "COMPLETE", "reasoning": "r", "confidence": 0.1}]}}


async def test_a_submitted_revision_waits_for_a_driver(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    parent = await h.run()
    run = await submit_revision(h.engine, h.store, h.audit, parent.run.id, "qa-engineering", "Add load tests.")
    assert (run.status, run.parent_run_id, run.feedback) == (RunStatus.RUNNING, parent.run.id, "Add load tests.")
    stages = await h.store.stages(run.id)
    assert [s.status for s in stages] == [StageStatus.COMPLETE] * 3 + [StageStatus.PENDING] * 2
    assert all(s.model.startswith("reused from") for s in stages[:3])
    reused = [(a.name, a.sha256) for a in await h.store.artifacts(parent.run.id) if a.stage_index < 3]
    assert [(a.name, a.sha256) for a in await h.store.artifacts(run.id)] == reused
    assert (Path(run.artifacts_dir) / "backend" / "app.py").is_file()  # the reused files are in its bundle
    assert [e.kind for e in await h.audit.entries(run.id)] == ["run.created"] + ["stage.complete"] * 3
    assert "run.started" in h.events and h.events.count("run.completed") == 1  # the parent's only

    async with h.store.lease(run.id):  # let go on return: free for a worker to take
        pass
    out = await h.engine.drive(run.id)
    assert out.run.status is RunStatus.COMPLETE and [s.attempts for s in out.stages] == [0, 0, 0, 1, 1]


def _refusal(exc: pytest.ExceptionInfo[FactoryError]) -> tuple[type[FactoryError], str]:
    return type(exc.value), str(exc.value)


@pytest.mark.parametrize(
    ("run_id", "team", "feedback"),
    [
        (None, "sre-operations", "x"),  # not in the run
        (None, "qa-engineering", "  "),  # empty feedback
        (None, "qa-engineering", "y" * 70_000),  # too long
        (None, "qa-engineering", "a\x00b"),  # not storable
        ("run-nope", "qa-engineering", "x"),  # no such run
        ("waiting", "documentation", "x"),  # past a stage that is not complete
    ],
)
async def test_submit_and_revise_refuse_alike(tmp_path: Path, run_id: str | None, team: str, feedback: str) -> None:
    h = Harness(tmp_path, LOW_ARCHITECTURE)
    waiting = await h.run()
    h2 = Harness(tmp_path, {})
    parent = await h2.run()
    harness, target = (h, waiting.run.id) if run_id == "waiting" else (h2, run_id or parent.run.id)
    before = list(harness.store._runs)
    refusals: list[Any] = []
    for create in (revise, submit_revision):
        with pytest.raises(FactoryError) as exc:
            await create(harness.engine, harness.store, harness.audit, target, team, feedback)
        refusals.append(_refusal(exc))
    assert refusals[0] == refusals[1] and refusals[0][0].exit_code == 2
    assert list(harness.store._runs) == before  # nothing was written
