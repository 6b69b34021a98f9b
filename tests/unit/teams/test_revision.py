"""The revision loop: a new linked run from one team, feedback in every objective, the parent intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.errors import InputError, RunNotFound
from routing.base import ChatRequest, ChatResponse
from routing.scripted import ScriptedModel
from teams.base import RunStatus, StageStatus
from teams.revision import revise
from tests.unit.teams.test_gate import Harness


class Recording(ScriptedModel):
    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[tuple[str | None, str]] = []

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        self.prompts.append((request.team, request.messages[-1].content))
        return await super().complete(request, timeout_s=timeout_s)


async def test_revision_reuses_earlier_stages_and_anchors_feedback(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    model = Recording()
    h.engine._d.runner._model._inner = model  # type: ignore[attr-defined]
    parent = await h.run()
    parent_audit = await h.audit.entries(parent.run.id)
    model.prompts.clear()

    out = await revise(h.engine, h.store, h.audit, parent.run.id, "backend-engineering", "Use PostgreSQL, not SQLite.")
    assert out.run.status is RunStatus.COMPLETE and out.run.parent_run_id == parent.run.id
    assert [s.attempts for s in out.stages] == [0, 0, 1, 1, 1]
    assert all(s.status is StageStatus.COMPLETE for s in out.stages)
    assert out.stages[0].result == parent.stages[0].result and out.stages[0].model.startswith("reused from")
    assert [team for team, _ in model.prompts] == ["backend-engineering", "qa-engineering", "documentation"]
    assert all("Use PostgreSQL, not SQLite." in prompt for _, prompt in model.prompts)

    assert await h.audit.entries(parent.run.id) == parent_audit  # the parent is untouched
    assert (await h.store.get_run(parent.run.id)).status is RunStatus.COMPLETE  # type: ignore[union-attr]
    entries = await h.audit.entries(out.run.id)
    created = json.loads(entries[0].payload)
    assert created["parent_run_id"] == parent.run.id and created["revised_from_team"] == "backend-engineering"
    # the reused stages' completions come with the creation, naming their run (never "recovered")
    assert [e.key for e in entries[1:3]] == ["stage.0.complete", "stage.1.complete"]
    parent_hashes = {e.key: json.loads(e.payload)["artifacts"] for e in parent_audit if e.kind == "stage.complete"}
    for entry in entries[1:3]:
        payload = json.loads(entry.payload)
        assert payload["reused_from"] == parent.run.id and "recovered" not in payload
        assert payload["artifacts"] == parent_hashes[entry.key]
    assert not any(json.loads(e.payload).get("recovered") for e in entries)
    assert created["parent_audit_head_sha256"] == parent.audit.head_sha256
    manifest = json.loads((Path(out.run.artifacts_dir) / "manifest.json").read_text())
    assert len(manifest["artifacts"]) == 9 and (Path(out.run.artifacts_dir) / "analysis" / "scope.md").is_file()
    assert Path(parent.run.artifacts_dir) != Path(out.run.artifacts_dir)


@pytest.mark.parametrize(
    ("team", "feedback", "error", "needle"),
    [
        ("sre-operations", "x", InputError, "not in run"),
        ("nobody", "x", InputError, "not in run"),
        ("documentation", "   ", InputError, "feedback is empty"),
    ],
)
async def test_bad_revisions_are_refused_before_anything_is_written(
    tmp_path: Path, team: str, feedback: str, error: type[Exception], needle: str
) -> None:
    h = Harness(tmp_path, {})
    parent = await h.run()
    with pytest.raises(error, match=needle):
        await revise(h.engine, h.store, h.audit, parent.run.id, team, feedback)
    assert list(h.store._runs) == [parent.run.id]


async def test_revising_an_unknown_run_or_past_an_unfinished_stage_is_refused(tmp_path: Path) -> None:
    h = Harness(
        tmp_path, {"teams": {"solution-architecture": [{"status": "COMPLETE", "reasoning": "r", "confidence": 0.1}]}}
    )
    waiting = await h.run()
    with pytest.raises(RunNotFound):
        await revise(h.engine, h.store, h.audit, "run-nope", "documentation", "x")
    with pytest.raises(InputError, match="resume that run first or revise from solution-architecture"):
        await revise(h.engine, h.store, h.audit, waiting.run.id, "documentation", "x")
    out = await revise(h.engine, h.store, h.audit, waiting.run.id, "solution-architecture", "be bolder")
    assert out.run.status is RunStatus.COMPLETE
