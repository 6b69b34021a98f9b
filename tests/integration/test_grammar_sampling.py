"""The shortlist grammar sampler picks exactly the tokens llama-cpp-python's full grammar pass picks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from routing.embedded import default_model_path
from teams.base import Objective
from teams.roster import team
from teams.runner import build_messages
from teams.schema import SchemaBounds, response_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

llama_cpp = pytest.importorskip("llama_cpp")
grammar_sampling = pytest.importorskip("routing.grammar_sampling")


def _messages() -> list[dict[str, str]]:
    member = team("api-design")
    objective = Objective(
        id="o", run_id="r", team=member.slug, goal="Design the HTTP API", acceptance_criteria=["an OpenAPI document"]
    )
    messages = build_messages(
        member,
        objective,
        "Build a URL shortener with an HTTP API: create short links, redirect, count clicks.",
        [],
        feedback=[],
        budget_chars=2400,
        tools=("recall", "write_artifact", "request_clarification"),
        tool_rounds=1,
    )
    return [{"role": m.role, "content": m.content} for m in messages]


def _generate(llama: Any, schema: dict[str, Any], temperature: float) -> str:
    llama.reset()
    llama.set_seed(42)
    out = llama.create_chat_completion(
        messages=_messages(),
        response_format={"type": "json_object", "schema": schema},
        max_tokens=160,
        temperature=temperature,
        repeat_penalty=1.3,
    )
    return str(out["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def models() -> Any:
    path = str(default_model_path())
    stock = llama_cpp.Llama(model_path=path, n_ctx=2048, seed=42, verbose=False)
    checked = grammar_sampling.CheckedGrammarLlama(model_path=path, n_ctx=2048, seed=42, verbose=False)
    yield stock, checked
    stock.close()
    checked.close()


@pytest.mark.parametrize("temperature", [0.0, 0.2])
@pytest.mark.parametrize("tools", [(), ("recall", "write_artifact", "request_clarification")])
def test_same_output_as_the_full_grammar_pass(models: Any, temperature: float, tools: tuple[str, ...]) -> None:
    stock, checked = models
    schema = response_schema(team("api-design"), SchemaBounds.compact(), tools=tools)
    expected = _generate(stock, schema, temperature)
    got = _generate(checked, schema, temperature)
    assert got == expected
    sampler = checked.last_sampler
    assert sampler is not None and sampler.sampled > 20
    assert sampler.full_passes < sampler.sampled  # the shortlist did the work for some tokens


def test_output_still_follows_the_schema(models: Any) -> None:
    _, checked = models
    schema = {
        "type": "object",
        "properties": {"status": {"enum": ["COMPLETE", "BLOCKED"]}, "count": {"type": "integer"}},
        "required": ["status", "count"],
    }
    data = json.loads(_generate(checked, schema, 0.2))
    assert data["status"] in {"COMPLETE", "BLOCKED"} and isinstance(data["count"], int)
