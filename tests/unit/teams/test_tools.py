"""Team tools: recall, write_artifact, request_clarification as validated, bounded tool calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from routing.base import ChatRequest, ChatResponse
from teams.base import Objective, RunStatus, StageStatus
from teams.results import Artifact, TaskStatus
from teams.roster import team
from teams.runner import PriorArtifact, TeamRunner
from teams.schema import SchemaBounds, response_schema
from teams.tools import TOOL_NAMES, ArtifactRecall, kind_for
from tests.unit.teams.test_gate import Harness, result

BACKEND = team("backend-engineering")


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"tool": tool, "arguments": arguments}


class Queue:
    """A model answering from a queue (the last answer repeats) and keeping every request."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return ChatResponse(text=text, alias=request.alias, model="queue")

    def offered(self, index: int) -> list[str]:
        schema = self.requests[index].json_schema or {}
        return [b["properties"]["tool"]["const"] for b in schema.get("anyOf", []) if "tool" in b["properties"]]


def runner(model: Queue, rounds: int = 3) -> TeamRunner:
    return TeamRunner(model, timeout_s=5, max_tokens=256, bounds=SchemaBounds(), budget_chars=4000, tool_rounds=rounds)


OBJECTIVE = Objective(id="r:7", run_id="r", team=BACKEND.slug, goal=BACKEND.goal, acceptance_criteria=["c"])
PRIOR = [
    PriorArtifact("api-design", Artifact(name="api/openapi.yaml", kind="yaml", content="paths:\n  /links: post")),
    PriorArtifact("database-engineering", Artifact(name="db/schema.sql", kind="sql", content="CREATE TABLE links;")),
]
DONE = result(artifacts=[{"name": "backend/app.py", "kind": "code", "content": "app = 1"}])


async def test_recall_result_is_fed_back_before_the_answer() -> None:
    model = Queue(call("recall", query="links table"), DONE)
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    assert execution.result.status is TaskStatus.COMPLETE and len(model.requests) == 2
    [record] = execution.tool_calls
    assert record.ok and "database-engineering/db/schema.sql" in record.outcome
    assert "CREATE TABLE links;" in model.requests[1].messages[-1].content
    assert model.requests[1].purpose == "tool"


async def test_written_files_join_the_result_unless_it_carries_them() -> None:
    model = Queue(
        call("write_artifact", name="backend/models.py", content="class Link: ..."),
        call("write_artifact", name="backend/app.py", content="draft"),
        DONE,
    )
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    files = {a.name: a for a in execution.result.artifacts}
    assert files["backend/app.py"].content == "app = 1"  # the result's own version wins
    assert files["backend/models.py"].content == "class Link: ..." and files["backend/models.py"].kind == "code"


async def test_request_clarification_ends_the_objective_as_needs_clarification() -> None:
    model = Queue(call("request_clarification", target_team="api-design", question="Which status on a miss?"))
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    assert execution.result.status is TaskStatus.NEEDS_CLARIFICATION and len(model.requests) == 1
    assert execution.result.clarification_needed is not None
    assert execution.result.clarification_needed.target_team == "api-design"


async def test_invalid_calls_are_refused_with_the_reason_and_never_executed() -> None:
    model = Queue(
        call("request_clarification", target_team=BACKEND.slug, question="me?"),
        call("write_artifact", name="../../etc/passwd", content="x"),
        call("delete_everything"),
        DONE,
    )
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    assert [t.ok for t in execution.tool_calls] == [False, False, False]
    reasons = [t.outcome for t in execution.tool_calls]
    assert "own team" in reasons[0] and "relative path" in reasons[1] and "delete_everything" in reasons[2]
    assert "Tool call rejected" in model.requests[1].messages[-1].content
    assert [a.name for a in execution.result.artifacts] == ["backend/app.py"]


async def test_tool_calls_are_bounded_then_only_a_result_is_accepted() -> None:
    endless = [call("recall", query=f"q{i}") for i in range(20)]
    model = Queue(*endless)
    execution = await runner(model, rounds=3).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    assert len(model.requests) == 5  # 3 tool rounds, then the answer and its one repair
    assert model.offered(2) == list(TOOL_NAMES) and model.offered(3) == []
    assert execution.system_blocked and execution.result.status is TaskStatus.BLOCKED
    assert "no tool calls are left" in (execution.problem or "")


async def test_a_verbatim_repeat_closes_the_tools() -> None:
    model = Queue(call("recall", query="links"), call("recall", query="links"), DONE)
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    assert [t.ok for t in execution.tool_calls] == [True, False]
    assert "already called" in execution.tool_calls[1].outcome
    assert model.offered(2) == [] and execution.result.status is TaskStatus.COMPLETE


async def test_recall_is_offered_only_when_there_is_something_to_search() -> None:
    model = Queue(DONE)
    await runner(model).execute(BACKEND, OBJECTIVE, "req", [])
    assert model.offered(0) == ["write_artifact", "request_clarification"]
    assert "recall(query)" not in model.requests[0].messages[0].content
    assert "write_artifact(name, content)" in model.requests[0].messages[0].content


async def test_no_tool_rounds_means_the_plain_result_schema() -> None:
    model = Queue(DONE)
    await runner(model, rounds=0).execute(BACKEND, OBJECTIVE, "req", PRIOR)
    assert model.requests[0].json_schema == response_schema(BACKEND, SchemaBounds())
    assert "tool calls" not in model.requests[0].messages[0].content


async def test_artifact_recall_ranks_by_terms_then_recency() -> None:
    source = ArtifactRecall(
        [
            ("a", Artifact(name="old.md", kind="markdown", content="links are short\n\nunrelated text")),
            ("b", Artifact(name="new.md", kind="markdown", content="short links expire")),
            ("c", Artifact(name="other.md", kind="markdown", content="nothing here")),
        ],
        chunk_chars=20,
    )
    hits = await source.recall("Short LINKS", limit=5)
    assert [h.source for h in hits] == ["b/new.md", "a/old.md"] and hits[0].score == 1.0
    assert hits[1].excerpt == "links are short"
    assert await source.recall("?? !!", limit=5) == [] and source.available()
    assert not ArtifactRecall([]).available()


def test_kind_of_a_written_file() -> None:
    assert kind_for(BACKEND, "backend/app.py") == "code"
    assert kind_for(BACKEND, "notes/x.md") == "markdown" and kind_for(BACKEND, "a.sql") == "sql"
    assert kind_for(BACKEND, "LICENSE") == "text"


async def test_pipeline_tools_end_to_end(tmp_path: Path) -> None:
    """Through the engine: recall sees earlier stages, files land in the bundle, a question escalates."""
    h = Harness(
        tmp_path,
        {
            "teams": {
                "solution-architecture": [call("recall", query="scripted markdown")],
                "backend-engineering": [call("write_artifact", name="backend/models.py", content="class Link: ...")],
                "qa-engineering": [
                    call("request_clarification", target_team="backend-engineering", question="Is /health public?")
                ],
            }
        },
    )
    out = await h.run()
    assert out.run.status is RunStatus.WAITING_HUMAN
    assert [s.status for s in out.stages][2:4] == [StageStatus.COMPLETE, StageStatus.WAITING_HUMAN]
    assert (Path(out.run.artifacts_dir) / "backend" / "models.py").read_text() == "class Link: ..."
    [esc] = out.escalations
    assert esc.kind.value == "clarification" and "Is /health public?" in esc.question
    entries = await h.audit.entries(out.run.id)
    executions = [json.loads(e.payload) for e in entries if e.kind == "stage.execution"]
    tools = {p["team"]: p["tool_calls"] for p in executions}
    assert "business-analysis/analysis/scope.md" in tools["solution-architecture"][0]["outcome"]
    assert tools["backend-engineering"][0]["arguments"]["name"] == "backend/models.py"
    assert tools["qa-engineering"][0]["tool"] == "request_clarification"


def test_the_result_schema_keeps_taskresults_rules() -> None:
    """A grammar built from it cannot produce BLOCKED without a blocker or a question without a target."""
    import jsonschema

    schema = response_schema(BACKEND, SchemaBounds.compact(), tools=TOOL_NAMES)
    artifacts = [{"name": d.name, "kind": d.kind, "content": "x"} for d in BACKEND.produces]
    done = {**result(artifacts=artifacts), "confidence": 0.8}
    question = {"target_team": "api-design", "question": "Which port?"}
    valid = [
        done,
        {**done, "status": "BLOCKED", "blockers": ["no database chosen"]},
        {**done, "status": "NEEDS_CLARIFICATION", "clarification_needed": question},
        call("recall", query="links"),
    ]
    invalid = [
        {**done, "status": "BLOCKED"},
        {**done, "status": "BLOCKED", "blockers": [""]},
        {**done, "status": "NEEDS_CLARIFICATION"},
        {**done, "clarification_needed": {**question, "target_team": BACKEND.slug}},
        {**done, "artifacts": artifacts[:1]},
        call("recall", query=""),
    ]
    for data in valid:
        jsonschema.validate(data, schema)
    for data in invalid:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, schema)


async def test_a_buffer_past_80_percent_of_the_window_is_retained_and_truncated() -> None:
    big = PriorArtifact("database-engineering", Artifact(name="db/notes.md", kind="markdown", content="links " * 900))
    model = Queue(call("recall", query="links"), call("recall", query="links again"), DONE)
    batches: list[list[str]] = []

    async def compact(run_id: str, batch: list[str]) -> str:
        batches.append(batch)
        return "Earlier in this objective: recall found the links notes."

    small = TeamRunner(
        model, timeout_s=5, max_tokens=256, bounds=SchemaBounds(), budget_chars=4000, tool_rounds=3, window_tokens=1800
    )
    execution = await small.execute(BACKEND, OBJECTIVE, "req", [*PRIOR, big], compact=compact)
    assert execution.result.status is TaskStatus.COMPLETE and execution.compactions >= 1
    assert batches and any("links" in text for text in batches[0])  # the tool rounds went to memory
    last = model.requests[-1].messages
    assert len(last) == 3 and "recall found the links notes" in last[-1].content  # objective kept, buffer cut
    assert last[1].content == model.requests[0].messages[1].content  # the original objective, whole
    untouched = await runner(Queue(call("recall", query="links"), DONE)).execute(
        BACKEND, OBJECTIVE, "req", [*PRIOR, big], compact=compact
    )
    assert untouched.compactions == 0  # no window given: nothing is cut
