"""Text PostgreSQL cannot store (NUL, lone surrogates) is refused as invalid output or made storable
before it reaches a store: results, tool calls, validation messages, escalations, requirements."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from factory.errors import InputError
from observability.text import unstorable
from teams.base import StageRecord
from teams.escalation import escalation_for
from teams.gate import GateDecision, Verdict
from teams.parsing import OutputProblem, parse_task_result
from teams.records import validate_requirement
from teams.results import TaskResult, TaskStatus, blocked
from teams.tools import ToolProblem, validate_tool_call
from tests.unit.teams.test_tools import BACKEND, DONE, OBJECTIVE, Queue, call, runner

BAD = ["\x00", "\ud800", "\udfff", "\ud83d"]  # NUL, lone surrogates (a high one without its pair too)


def with_text(where: str, bad: str) -> dict[str, Any]:
    text = f"before{bad}after"
    data: dict[str, Any] = {
        "status": "COMPLETE",
        "reasoning": "r",
        "artifacts": [{"name": "a.md", "kind": "markdown", "content": "x"}],
        "confidence": 0.9,
    }
    if where in ("content", "name"):
        data["artifacts"][0][where] = text
    elif where == "blockers":
        data.update(status="BLOCKED", blockers=[text])
    elif where == "question":
        data.update(status="NEEDS_CLARIFICATION", clarification_needed={"target_team": "api-design", "question": text})
    elif where in ("assumptions_made", "verified_facts"):
        data[where] = [text]
    else:
        data[where] = text
    return data


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    "where", ["reasoning", "blockers", "assumptions_made", "verified_facts", "question", "content", "name"]
)
def test_every_text_of_a_result_refuses_what_postgres_cannot_store(where: str, bad: str) -> None:
    # The model writes JSON: "\u0000" and "\ud800" are escapes that decode to the unstorable text.
    text = json.dumps(with_text(where, bad))
    with pytest.raises(OutputProblem) as refused:
        parse_task_result(text)
    message = str(refused.value)
    assert unstorable(message) is None  # the message itself can be audited
    if where != "name":
        assert ("NUL" if bad == "\x00" else "lone surrogate") in message


def test_a_surrogate_pair_is_a_character_and_is_kept() -> None:
    text = json.dumps(with_text("content", "\U0001f600"))
    assert "\\ud83d\\ude00" in text  # sent as a JSON surrogate pair
    result = parse_task_result(text)
    assert result.artifacts[0].content == "before\U0001f600after"


async def test_a_refused_result_is_repaired_by_the_model() -> None:
    bad = {**DONE, "artifacts": [{"name": "backend/app.py", "kind": "code", "content": "a\x00b"}]}
    model = Queue(bad, DONE)
    execution = await runner(model).execute(BACKEND, OBJECTIVE, "req", [])
    assert execution.result.status is TaskStatus.COMPLETE and execution.result.artifacts[0].content == "app = 1"
    assert "NUL" in model.requests[1].messages[-1].content  # the repair prompt says what to fix


async def test_unrepairable_output_quoting_the_models_keys_ends_blocked_and_storable() -> None:
    hostile = {**DONE, "\x00\ud800": 1}  # an unknown key: the validation message quotes it
    execution = await runner(Queue(json.dumps(hostile))).execute(BACKEND, OBJECTIVE, "req", [])
    assert execution.system_blocked and execution.problem is not None
    assert unstorable(execution.problem) is None
    assert unstorable(json.dumps(execution.result.model_dump(), ensure_ascii=False)) is None


def test_a_factory_blocked_result_is_made_storable_not_refused() -> None:
    result = blocked("model said \x00 and \ud800", reasoning="why \x00")
    assert result.blockers == ["model said \ufffd and \ufffd"] and result.reasoning == "why \ufffd"
    TaskResult.model_validate(result.model_dump())


@pytest.mark.parametrize(
    "data",
    [
        call("write_artifact", name="a.md", content="a\x00b"),
        call("write_artifact", name="a.md", content="\ud800"),
        call("recall", query="links\x00"),
        call("request_clarification", target_team="api-design", question="why\ud800?"),
    ],
)
def test_tool_arguments_are_refused_like_results(data: dict[str, Any]) -> None:
    with pytest.raises(ToolProblem) as refused:
        validate_tool_call(data, BACKEND)
    assert unstorable(str(refused.value)) is None and unstorable(refused.value.tool) is None


def test_a_tool_name_quoting_unstorable_text_is_made_storable() -> None:
    with pytest.raises(ToolProblem) as refused:
        validate_tool_call({"tool": "rm\x00\ud800", "arguments": {}}, BACKEND)
    assert unstorable(refused.value.tool) is None and unstorable(str(refused.value)) is None


def test_an_escalations_texts_are_storable_whatever_the_reason_quotes() -> None:
    stage = StageRecord(run_id="run-x", index=0, team=BACKEND.slug, attempts=1)
    decision = GateDecision(Verdict.ESCALATE, "provider said \x00\ud800", kind="blocked", priority="high")
    escalation = escalation_for("run-x", stage, blocked("b"), decision, datetime.now(UTC))
    assert unstorable(escalation.question) is None
    assert unstorable(json.dumps(escalation.context, ensure_ascii=False)) is None
    assert "provider said \ufffd\ufffd" in escalation.question


@pytest.mark.parametrize(("text", "needle"), [("build\x00it", "NUL"), ("build \udcff it", "lone surrogate")])
def test_a_requirement_postgres_cannot_store_is_an_input_error(text: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        validate_requirement(text, 64 * 1024)
