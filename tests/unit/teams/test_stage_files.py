"""Files one stage writes beside the earlier stages' (issue 13, item 2), on the twins.

A later stage replacing an earlier stage's file is a visible, audited event; a file that cannot sit
beside the earlier files (a file where an earlier stage made a folder, or the reverse) is unusable
output, sent back to the team like any other, never a failed run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from observability.base import Event
from routing.base import ChatRequest, ChatResponse
from routing.ledger import RecordingModel
from routing.scripted import ScriptedModel
from teams.base import RunStatus, StageStatus
from tests.unit.teams.test_gate import Harness, result


def md(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "kind": "markdown", "content": text}


async def test_replacing_an_earlier_stages_file_is_audited_and_announced(tmp_path: Path) -> None:
    rewrite = result(artifacts=[md("analysis/scope.md", "# Scope, as architecture sees it\n")])
    h = Harness(tmp_path, {"teams": {"solution-architecture": [rewrite]}})
    seen: list[Event] = []
    h.bus.subscribe(seen.append)
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE
    entries = {e.key: json.loads(e.payload) for e in await h.audit.entries(out.run.id)}
    before = entries["stage.0.complete"]["artifacts"]["analysis/scope.md"]
    replaced = entries["stage.1.complete"]["replaced"]
    assert replaced == {
        "analysis/scope.md": {"name": "analysis/scope.md", "stage": 0, "team": "business-analysis", "sha256": before}
    }
    assert "replaced" not in entries["stage.0.complete"] and "replaced" not in entries["stage.2.complete"]
    [done] = [e for e in seen if e.type == "stage.completed" and e.data["stage"] == 1]
    assert done.data["replaced"] == {"analysis/scope.md": "business-analysis (stage 1)"}
    # The bundle holds the later version, and the manifest's hash is that file's.
    bundle = Path(out.run.artifacts_dir)
    on_disk = (bundle / "analysis" / "scope.md").read_text()
    assert on_disk == "# Scope, as architecture sees it\n"
    manifest = {a["name"]: a for a in json.loads((bundle / "manifest.json").read_text())["artifacts"]}
    assert manifest["analysis/scope.md"]["sha256"] == hashlib.sha256(on_disk.encode()).hexdigest()
    assert manifest["analysis/scope.md"]["team"] == "solution-architecture"


async def test_a_file_where_an_earlier_stage_made_a_folder_is_sent_back(tmp_path: Path) -> None:
    clash = result(artifacts=[md("analysis", "a file named like the analysis folder")])
    h = Harness(tmp_path, {"teams": {"solution-architecture": [clash]}})
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE and out.error is None
    architecture = out.stages[1]
    assert architecture.attempts == 2  # the clashing answer, then a usable one
    assert not (Path(out.run.artifacts_dir) / "analysis").is_file()
    entries = {e.key: json.loads(e.payload) for e in await h.audit.entries(out.run.id)}
    first = entries["stage.1.execution.1"]
    assert "earlier stage" in first["output_problem"] and first["gate"]["verdict"] == "retry"
    assert out.audit.intact


class BlocksTheManifest(ScriptedModel):
    """Answers as scripted; when the last team is asked, puts a folder where the manifest goes."""

    def __init__(self, runs_dir: Path) -> None:
        super().__init__({})
        self.runs_dir = runs_dir

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        if request.team == "documentation" and request.run_id:
            manifest = self.runs_dir / request.run_id / "manifest.json"
            for _ in range(100):  # the anchor each committed stage moves is written beside the run
                manifest.unlink(missing_ok=True)
                with contextlib.suppress(FileExistsError):
                    manifest.mkdir(parents=True)
                    break
                await asyncio.sleep(0.01)
        return await super().complete(request, timeout_s=timeout_s)


async def test_a_manifest_that_cannot_be_written_fails_the_run_resumably(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    h.runner._model = RecordingModel(BlocksTheManifest(tmp_path), h.store)  # type: ignore[attr-defined]
    out = await h.run()
    assert out.run.status is RunStatus.FAILED and out.error and "manifest.json" in out.error
    assert all(s.status is StageStatus.COMPLETE for s in out.stages)  # nothing the teams did is lost
    (Path(out.run.artifacts_dir) / "manifest.json").rmdir()
    done = await h.engine.drive(out.run.id)  # resuming writes it, executing nothing again
    assert done.run.status is RunStatus.COMPLETE and done.timings == []
    assert (Path(out.run.artifacts_dir) / "manifest.json").is_file() and done.audit.intact


class BreaksTheBundle(ScriptedModel):
    """Answers as scripted; when ``team`` is asked, puts a file where its folder of the bundle goes,
    so the stage's files cannot be written after the model call was paid for."""

    def __init__(self, runs_dir: Path, team: str, folder: str) -> None:
        super().__init__({})
        self.runs_dir, self.team, self.folder = runs_dir, team, folder

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        if request.team == self.team and request.run_id:
            (self.runs_dir / request.run_id / self.folder).write_text("in the way")
        return await super().complete(request, timeout_s=timeout_s)


async def test_an_execution_whose_commit_failed_is_still_audited(tmp_path: Path) -> None:
    h = Harness(tmp_path, {})
    model = BreaksTheBundle(tmp_path, "solution-architecture", "architecture")
    h.runner._model = RecordingModel(model, h.store)  # type: ignore[attr-defined]
    out = await h.run()
    assert out.run.status is RunStatus.FAILED and out.stages[1].status is StageStatus.FAILED
    entries = {e.key: json.loads(e.payload) for e in await h.audit.entries(out.run.id)}
    paid = entries["stage.1.execution.1"]  # the model call happened: it is on record, with why it did not land
    assert paid["gate"]["verdict"] == "advance" and "architecture" in paid["commit_error"]
    assert "stage.1.complete" not in entries and entries["stage.1.failed.1"]["team"] == "solution-architecture"
    assert out.audit.intact


async def test_each_commit_moves_the_audit_anchor_in_the_manifest(tmp_path: Path) -> None:
    waiting = result(confidence=0.3)  # an approval: the run waits with its anchor at the escalation
    h = Harness(tmp_path, {"teams": {"backend-engineering": [waiting]}})
    out = await h.run()
    assert out.run.status is RunStatus.WAITING_HUMAN
    manifest = json.loads((Path(out.run.artifacts_dir) / "manifest.json").read_text())
    entries = await h.audit.entries(out.run.id)
    assert entries[-1].kind == "escalation.opened"
    assert (manifest["audit_entries"], manifest["audit_head_sha256"]) == (len(entries), entries[-1].sha256)


async def test_a_complete_runs_manifest_must_be_there_and_a_plain_file(tmp_path: Path) -> None:
    from teams.snapshot import verify_run

    h = Harness(tmp_path, {})
    out = await h.run()
    assert (await verify_run(h.audit, out.run)).intact
    manifest = Path(out.run.artifacts_dir) / "manifest.json"
    kept = manifest.read_bytes()
    manifest.unlink()
    gone = await verify_run(h.audit, out.run)
    assert not gone.intact and any("missing" in p for p in gone.problems)
    os.mkfifo(manifest)  # would block a plain read forever
    fifo = await verify_run(h.audit, out.run)
    assert not fifo.intact and any("not a plain file" in p for p in fifo.problems)
    manifest.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(kept)
    manifest.symlink_to(elsewhere)
    linked = await verify_run(h.audit, out.run)
    assert not linked.intact and any("cannot be read" in p for p in linked.problems)
