"""The ``check_files`` tool (issue 19): a team runs its own checks over the files it has written
before it delivers, offered only when it has checks and the factory checks results."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from teams.base import Run, RunStatus, StageRecord
from teams.pipeline import PipelineEngine
from teams.results import Artifact, TaskResult, TaskStatus
from teams.roster import Team, team
from teams.runner import PriorArtifact, TeamRunner
from teams.schema import SchemaBounds, response_schema
from teams.tools import CHECK_FILES, TOOL_NAMES, checks_answer
from teams.verification import Verification, Verifier
from tests.unit.teams.test_gate import Harness, result
from tests.unit.teams.test_tools import OBJECTIVE, PRIOR, Queue, call
from verify.base import CheckReport, Finding, Outcome

BACKEND = team("backend-engineering")
ANALYSIS = team("business-analysis")  # a team without checks
BROKEN = "def shorten(url):\n    return url[:8\n"
FIXED = "def shorten(url):\n    return url[:8]\n"
DONE = result(artifacts=[{"name": "backend/app.py", "kind": "code", "content": FIXED}])


class Checker:
    """A ``FileChecker`` answering from a list of outcomes (the last repeats), keeping what it was given."""

    def __init__(self, *answers: list[CheckReport] | None | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], list[str]]] = []

    async def __call__(self, files: Sequence[Artifact], beside: Sequence[Artifact]) -> Sequence[CheckReport] | None:
        self.calls.append(([a.name for a in files], [a.name for a in beside]))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def failed(name: str, message: str = "'(' was never closed", line: int = 2) -> CheckReport:
    finding = Finding(check="python-syntax", artifact=name, message=message, line=line)
    return CheckReport(check="python-syntax", outcome=Outcome.FAILED, artifacts=[name], findings=[finding])


def passed(name: str) -> CheckReport:
    return CheckReport(check="python-syntax", outcome=Outcome.PASSED, artifacts=[name])


def runner(model: Queue, rounds: int = 3) -> TeamRunner:
    return TeamRunner(model, timeout_s=5, max_tokens=256, bounds=SchemaBounds(), budget_chars=4000, tool_rounds=rounds)


def write(name: str = "backend/app.py", content: str = BROKEN) -> dict[str, Any]:
    return call("write_artifact", name=name, content=content)


async def test_not_offered_without_a_checker_a_team_with_checks_or_tool_rounds() -> None:
    model = Queue(DONE)
    await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    assert CHECK_FILES not in model.offered(0) and "check_files" not in model.requests[0].messages[0].content
    analysis = OBJECTIVE.model_copy(update={"team": ANALYSIS.slug})
    model = Queue(result())
    await runner(model).execute(ANALYSIS, analysis, "req", PRIOR, checker=Checker(None))
    assert CHECK_FILES not in model.offered(0)
    model = Queue(DONE)
    await runner(model, rounds=0).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=Checker(None))
    assert model.requests[0].json_schema == response_schema(BACKEND, SchemaBounds())


async def test_offered_with_a_checker_and_the_prompt_names_the_teams_checks() -> None:
    model = Queue(DONE)
    await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=Checker(None))
    assert model.offered(0) == ["recall", "write_artifact", CHECK_FILES, "request_clarification"]
    prompt = model.requests[0].messages[0].content
    assert "check_files(names?)" in prompt and "python-syntax, python-import, ruff, bandit, secrets" in prompt


async def test_a_finding_comes_back_and_the_fixed_file_is_delivered() -> None:
    checker = Checker([failed("backend/app.py")], [passed("backend/app.py")])
    model = Queue(write(), call(CHECK_FILES, names=["backend/app.py"]), write(content=FIXED), call(CHECK_FILES), DONE)
    execution = await runner(model, rounds=4).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=checker)
    assert execution.result.status is TaskStatus.COMPLETE and not execution.system_blocked
    first, second = (t for t in execution.tool_calls if t.tool == CHECK_FILES)
    assert first.ok and "failed python-syntax" in first.outcome and "backend/app.py line 2" in first.outcome
    assert "'(' was never closed" in model.requests[2].messages[-1].content  # the model was told
    assert first.arguments == {"names": ["backend/app.py"]} and second.arguments == {"names": None}
    assert second.ok and "passed python-syntax" in second.outcome and "Nothing to fix" in second.outcome
    assert checker.calls == [(["backend/app.py"], []), (["backend/app.py"], [])]


async def test_names_pick_the_files_checked_and_the_others_sit_beside() -> None:
    checker = Checker([passed("backend/b.py")])
    model = Queue(
        write("backend/a.py", "A = 1\n"),
        write("backend/b.py", "from backend.a import A\n"),
        call(CHECK_FILES, names=["./backend/b.py"]),  # canonical names, as write_artifact's
        DONE,
    )
    execution = await runner(model, rounds=4).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=checker)
    assert checker.calls == [(["backend/b.py"], ["backend/a.py"])]
    assert execution.tool_calls[-1].ok


async def test_bad_calls_are_refused_with_the_reason_and_nothing_is_checked() -> None:
    checker = Checker([passed("backend/app.py")])
    model = Queue(
        call(CHECK_FILES),  # nothing written yet
        write(),
        call(CHECK_FILES, names=["backend/other.py"]),
        call(CHECK_FILES, names=[]),
        call(CHECK_FILES, names=["../etc/passwd"]),
        call(CHECK_FILES, names=["backend/app.py"], strict=True),
        DONE,
    )
    execution = await runner(model, rounds=6).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=checker)
    records = execution.tool_calls
    assert [r.ok for r in records] == [False, True, False, False, False, False]
    assert "nothing written yet" in records[0].outcome and "write_artifact" in records[0].outcome
    assert "'backend/other.py' not written" in records[2].outcome and "written: backend/app.py" in records[2].outcome
    assert "names" in records[3].outcome and "relative path" in records[4].outcome and "strict" in records[5].outcome
    assert checker.calls == [] and execution.result.status is TaskStatus.COMPLETE


async def test_the_same_files_checked_again_is_a_repeat_changed_ones_are_not() -> None:
    checker = Checker([failed("backend/app.py")], [passed("backend/app.py")])
    model = Queue(write(), call(CHECK_FILES), write(content=FIXED), call(CHECK_FILES), call(CHECK_FILES), DONE)
    execution = await runner(model, rounds=6).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=checker)
    assert [r.ok for r in execution.tool_calls] == [True, True, True, True, False]
    assert "already called" in execution.tool_calls[-1].outcome and len(checker.calls) == 2
    assert CHECK_FILES not in model.offered(5) and execution.result.status is TaskStatus.COMPLETE


async def test_a_checker_that_fails_is_a_tool_problem_never_fatal() -> None:
    model = Queue(write(), call(CHECK_FILES), DONE)
    checker = Checker(RuntimeError("scratch folder full"))
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=checker)
    record = execution.tool_calls[-1]
    assert not record.ok and record.tool == CHECK_FILES and "could not run (scratch folder full)" in record.outcome
    assert "Tool call failed: check_files" in model.requests[2].messages[-1].content
    assert execution.result.status is TaskStatus.COMPLETE and not execution.system_blocked


async def test_no_applicable_check_and_checks_not_run_are_said() -> None:
    model = Queue(write("backend/notes.txt", "plain"), call(CHECK_FILES), DONE)
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=Checker(None))
    assert "none of your checks (python-syntax, python-import" in execution.tool_calls[-1].outcome
    skipped = CheckReport(
        check="python-import", outcome=Outcome.SKIPPED, artifacts=["a.py"], detail="no sandbox on this machine"
    )
    text = checks_answer(["a.py"], [passed("a.py"), skipped], BACKEND.checks, 1500)
    assert text.startswith("check_files over a.py: passed python-syntax; skipped python-import.")
    assert "- python-import skipped: no sandbox on this machine" in text


async def test_the_answer_is_bounded_like_recalls() -> None:
    findings = [
        Finding(check="ruff", artifact="backend/app.py", message=f"problem {i} " + "x" * 1900, line=i)
        for i in range(40)
    ]
    report = CheckReport(check="ruff", outcome=Outcome.FAILED, artifacts=["backend/app.py"], findings=findings)
    model = Queue(write(), call(CHECK_FILES), DONE)
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR, checker=Checker([report]))
    outcome = execution.tool_calls[-1].outcome
    assert len(outcome) <= 1500 and "failed ruff" in outcome and outcome.endswith("not shown]")


def test_the_schema_allows_the_call_with_or_without_names() -> None:
    schema = response_schema(BACKEND, SchemaBounds.compact(), tools=(*TOOL_NAMES, CHECK_FILES))
    for data in (call(CHECK_FILES), call(CHECK_FILES, names=["backend/app.py"])):
        jsonschema.validate(data, schema)
    for data in (call(CHECK_FILES, names=[]), call(CHECK_FILES, names=[""]), call(CHECK_FILES, other=1)):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, schema)
    without = response_schema(BACKEND, SchemaBounds.compact(), tools=TOOL_NAMES)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(call(CHECK_FILES), without)


class Watching:
    """The real ``Verifier`` (no sandbox: static checks only), noting what each call checked beside what."""

    def __init__(self, root: Path) -> None:
        self.verifier = Verifier(root, sandbox=None)
        self.seen: list[tuple[list[str], list[str]]] = []

    async def verify(
        self, run: Run, stage: StageRecord, member: Team, result: TaskResult, context: Sequence[PriorArtifact]
    ) -> Verification | None:
        if member.checks:
            self.seen.append(([a.name for a in result.artifacts], [p.artifact.name for p in context]))
        return await self.verifier.verify(run, stage, member, result, context)


def executions(entries: Sequence[Any]) -> list[dict[str, Any]]:
    return [json.loads(e.payload) for e in entries if e.kind == "stage.execution"]


def with_verifier(h: Harness, verifier: Watching) -> Harness:
    h.engine = PipelineEngine(dataclasses.replace(h.engine.deps, verifier=verifier))
    return h


async def test_through_the_engine_the_team_checks_its_file_then_passes_the_gate(tmp_path: Path) -> None:
    """The real checks through the real engine: the broken file's finding comes back to the model, the
    fixed file passes the gate at once, and the call is in the stage's execution audit entry."""
    script = {"teams": {BACKEND.slug: [write(), call(CHECK_FILES), DONE]}}
    watching = Watching(tmp_path / "scratch")
    h = with_verifier(Harness(tmp_path, script), watching)
    out = await h.run("business-analysis,backend-engineering")
    assert out.run.status is RunStatus.COMPLETE, out.escalations
    backend = out.stages[1]
    assert backend.attempts == 1 and backend.checks is not None and backend.checks["failed"] == 0
    tool_check, gate = watching.seen
    assert tool_check == (["backend/app.py"], ["analysis/scope.md"])  # beside the files it reads
    assert gate[0] == ["backend/app.py"]
    entries = await h.audit.entries(out.run.id)
    [execution] = [p for p in executions(entries) if p["team"] == BACKEND.slug]
    record = execution["tool_calls"][1]
    assert record["tool"] == CHECK_FILES and record["ok"] and record["arguments"] == {"names": None}
    assert "failed python-syntax" in record["outcome"] and "backend/app.py line 2" in record["outcome"]


async def test_without_a_verifier_nothing_changes(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"teams": {BACKEND.slug: [call(CHECK_FILES), DONE]}})
    out = await h.run("business-analysis,backend-engineering")
    assert out.run.status is RunStatus.COMPLETE and out.stages[1].checks is None
    entries = await h.audit.entries(out.run.id)
    [execution] = [p for p in executions(entries) if p["team"] == BACKEND.slug]
    [record] = execution["tool_calls"]
    assert not record["ok"] and "check_files is not available now" in record["outcome"]
