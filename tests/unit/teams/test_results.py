"""TaskResult validation: every field, bad statuses, path traversal in artifact names."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from teams.parsing import OutputProblem, parse_task_result
from teams.results import Artifact, TaskResult, TaskStatus


def valid(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "status": "COMPLETE",
        "reasoning": "done",
        "blockers": [],
        "assumptions_made": ["a"],
        "verified_facts": ["f"],
        "clarification_needed": None,
        "artifacts": [{"name": "docs/a.md", "kind": "markdown", "content": "# A"}],
        "confidence": 0.8,
    }
    data.update(overrides)
    return data


def test_valid_result_round_trips() -> None:
    result = TaskResult.model_validate(valid())
    assert result.status is TaskStatus.COMPLETE
    assert TaskResult.model_validate(result.model_dump(mode="json")) == result


@pytest.mark.parametrize("status", ["DONE", "complete", "", None, 3])
def test_unknown_status_is_refused(status: object) -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(valid(status=status))


@pytest.mark.parametrize("confidence", [-0.1, 1.01, "high", None, float("nan"), float("inf")])
def test_confidence_must_be_between_zero_and_one(confidence: object) -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(valid(confidence=confidence))


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "/abs/path.md",
        "a/../../b.md",
        "a\\b.md",
        "",
        ".hidden",
        "a/.git/config",
        "a//b",
        "a b.md",
        "x\x00.md",
    ],
)
def test_artifact_names_cannot_escape_the_bundle(name: str) -> None:
    with pytest.raises(ValidationError):
        Artifact(name=name, kind="markdown", content="x")


@pytest.mark.parametrize("name", ["README.md", "docs/a.md", "src/pkg/mod_1.py", "api/openapi.yaml"])
def test_relative_artifact_names_are_accepted(name: str) -> None:
    assert Artifact(name=name, kind="markdown", content="x").name == name


def test_unknown_artifact_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        Artifact(name="a.md", kind="binary", content="x")  # type: ignore[arg-type]


def test_duplicate_artifact_names_are_refused() -> None:
    art = {"name": "a.md", "kind": "markdown", "content": "x"}
    with pytest.raises(ValidationError, match="unique"):
        TaskResult.model_validate(valid(artifacts=[art, art]))


def test_needs_clarification_requires_the_question() -> None:
    with pytest.raises(ValidationError, match="clarification_needed"):
        TaskResult.model_validate(valid(status="NEEDS_CLARIFICATION"))
    ok = TaskResult.model_validate(
        valid(status="NEEDS_CLARIFICATION", clarification_needed={"target_team": "api-design", "question": "REST?"})
    )
    assert ok.clarification_needed is not None and ok.clarification_needed.target_team == "api-design"


def test_clarification_target_must_be_a_team() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(
            valid(status="NEEDS_CLARIFICATION", clarification_needed={"target_team": "nobody", "question": "?"})
        )


def test_blocked_requires_a_blocker() -> None:
    with pytest.raises(ValidationError, match="blocker"):
        TaskResult.model_validate(valid(status="BLOCKED"))
    assert TaskResult.model_validate(valid(status="BLOCKED", blockers=["no access"])).blockers == ["no access"]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(valid(extra_field=1))


@pytest.mark.parametrize("field", ["blockers", "assumptions_made", "verified_facts", "artifacts"])
def test_list_fields_must_be_lists(field: str) -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(valid(**{field: "not a list"}))


def test_reasoning_is_required() -> None:
    data = valid()
    del data["reasoning"]
    with pytest.raises(ValidationError):
        TaskResult.model_validate(data)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("I cannot do that", "no JSON object"),
        ("{not json}", "does not parse"),
        ('{"status": "COMPLETE"}', "does not match TaskResult"),
        ("[1, 2]", "no JSON object"),
    ],
)
def test_parse_explains_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(OutputProblem, match=needle):
        parse_task_result(text)


def test_parse_accepts_fenced_json_and_raw_newlines_in_strings() -> None:
    import json

    body = json.dumps(valid()).replace('"# A"', '"# A\nline two"')
    assert parse_task_result(f"Here you go:\n```json\n{body}\n```").artifacts[0].content == "# A\nline two"


def test_an_artifact_cannot_also_be_another_ones_folder() -> None:
    artifacts = [
        {"name": "docs", "kind": "markdown", "content": "x"},
        {"name": "docs/a.md", "kind": "markdown", "content": "y"},
    ]
    with pytest.raises(ValidationError, match="also a folder"):
        TaskResult.model_validate({"status": "COMPLETE", "reasoning": "r", "artifacts": artifacts, "confidence": 0.9})
