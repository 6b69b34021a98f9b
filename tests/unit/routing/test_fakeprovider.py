"""The fake provider, driven through the real LiteLLM: each scripted behaviour surfaces as the error
LiteLLM raises for it (what the router classifies for fallback and cooldown), with one request made."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import pytest

from teams.results import TaskResult, TaskStatus
from teams.roster import team
from teams.schema import SchemaBounds, result_schema
from tests.fakeprovider import FakeProvider, embedded_schema

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM must not fetch its price map
import litellm  # noqa: E402  (after the environment it reads at import)
from litellm.exceptions import (  # noqa: E402
    APIConnectionError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    Timeout,
)

CHAT = "/v1/chat/completions"
OLLAMA_MODEL = "qwen2.5:0.5b"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}, "n": {"type": "integer", "minimum": 3},
                   "tags": {"type": "array", "items": {"type": "string"}}, "kind": {"enum": ["a", "b"]}},
    "required": ["answer", "n", "tags", "kind"],
    "additionalProperties": False,
}  # fmt: skip
MESSAGES = [{"role": "system", "content": "You answer in JSON."}, {"role": "user", "content": "Say something."}]


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": False}}


async def _openai(fake: FakeProvider, *, timeout_s: float = 3, **kwargs: Any) -> Any:
    """One call through LiteLLM's openai/ provider with every retry off, so one request is made."""
    return await litellm.acompletion(
        model="openai/test-model", api_base=fake.url, api_key="sk-fake", messages=kwargs.pop("messages", MESSAGES),
        timeout=timeout_s, max_retries=0, num_retries=0, **kwargs,
    )  # fmt: skip


async def test_ok_answers_a_json_schema_request_with_a_valid_instance(fake_provider: FakeProvider) -> None:
    response = await _openai(fake_provider, response_format=_schema_format(SCHEMA))
    jsonschema.validate(json.loads(response.choices[0].message.content), SCHEMA)
    assert response.model == "test-model"
    assert response.usage.prompt_tokens >= 1 and response.usage.completion_tokens >= 1
    (seen,) = fake_provider.requests
    assert seen.path == CHAT and seen.headers["authorization"] == "Bearer sk-fake"
    assert seen.body["response_format"]["json_schema"]["schema"] == SCHEMA and seen.body["model"] == "test-model"


async def test_ok_answers_a_taskresult_schema_with_a_complete_result(fake_provider: FakeProvider) -> None:
    schema = result_schema(team("backend-engineering"), SchemaBounds())
    response = await _openai(fake_provider, response_format=_schema_format(schema))
    answer = json.loads(response.choices[0].message.content)
    jsonschema.validate(answer, schema)
    assert TaskResult.model_validate(answer).status == TaskStatus.COMPLETE
    assert answer["artifacts"], "the pinned deliverables are produced"


async def test_json_mode_answers_the_schema_given_in_the_prompt(fake_provider: FakeProvider) -> None:
    prompt = f"Answer with one JSON object valid against this JSON schema:\n```json\n{json.dumps(SCHEMA)}\n```"
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": "Go."}]
    response = await _openai(fake_provider, messages=messages, response_format={"type": "json_object"})
    jsonschema.validate(json.loads(response.choices[0].message.content), SCHEMA)
    plain = await _openai(fake_provider, response_format={"type": "json_object"})
    assert json.loads(plain.choices[0].message.content) == {"ok": True}
    text = await _openai(fake_provider)
    assert text.choices[0].message.content.startswith("Fake answer from test-model")


def test_only_a_fenced_block_that_looks_like_a_schema_is_taken() -> None:
    from routing.base import Message

    example = Message(
        role="user", content='Example:\n```json\n{"answer": "x"}\n```\nSchema:\n```json\n{"type": "object"}\n```'
    )
    assert embedded_schema([example]) == {"type": "object"}
    assert embedded_schema([Message(role="user", content='```json\n{"answer": "x"}\n```')]) is None


async def test_a_streamed_call_is_answered_as_server_sent_events(fake_provider: FakeProvider) -> None:
    stream = await _openai(fake_provider, stream=True, response_format=_schema_format(SCHEMA))
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize(
    ("behaviour", "error", "status"),
    [
        ("rate_limit", RateLimitError, 429),
        ("error_500", InternalServerError, 500),
        # LiteLLM wraps openai's APIConnectionError (no status) as a 500, not as its APIConnectionError.
        ("close", InternalServerError, 500),
        ("garbage", InternalServerError, 500),
        ("reject_json_schema", BadRequestError, 400),
        ("echo_key_error", InternalServerError, 500),
    ],
)
async def test_each_failure_surfaces_as_litellms_error_after_one_request(
    fake_provider: FakeProvider, behaviour: str, error: type[Exception], status: int
) -> None:
    fake_provider.push(behaviour)  # type: ignore[arg-type]  # a Behaviour, from the table above
    started = time.monotonic()
    with pytest.raises(error) as raised:
        await _openai(fake_provider, response_format=_schema_format(SCHEMA))
    assert time.monotonic() - started < 2, "a failure that answers at once surfaces at once"
    assert getattr(raised.value, "status_code", None) == status
    assert fake_provider.count(CHAT) == 1
    assert (await _openai(fake_provider)).choices[0].message.content, "one-shot: the next call is answered"


async def test_a_429_carries_retry_after(fake_provider: FakeProvider) -> None:
    fake_provider.retry_after_s = 7
    fake_provider.push("rate_limit")
    with pytest.raises(RateLimitError) as raised:
        await _openai(fake_provider)
    headers = getattr(raised.value, "litellm_response_headers", None)  # set by LiteLLM, not declared
    assert headers is not None and headers.get("retry-after") == "7"


async def test_a_hostile_error_quotes_the_callers_key(fake_provider: FakeProvider) -> None:
    """What a redaction test must catch: LiteLLM passes the provider's text on verbatim."""
    fake_provider.default = "echo_key_error"
    with pytest.raises(InternalServerError, match="Bearer sk-fake"):
        await _openai(fake_provider)


async def test_reject_json_schema_answers_json_mode(fake_provider: FakeProvider) -> None:
    fake_provider.default = "reject_json_schema"
    response = await _openai(fake_provider, response_format={"type": "json_object"})
    assert json.loads(response.choices[0].message.content) == {"ok": True}


async def test_a_hang_times_out_and_stopping_releases_it() -> None:
    fake = FakeProvider(default="hang")
    fake.start()
    try:
        started = time.monotonic()
        with pytest.raises(Timeout):
            await _openai(fake, timeout_s=1)
        assert 0.9 < time.monotonic() - started < 3
        assert fake.count(CHAT) == 1
    finally:
        started = time.monotonic()
        await asyncio.to_thread(fake.stop)
        assert time.monotonic() - started < 3, "a hanging handler does not hold the shutdown"


async def test_two_providers_one_down(fake_providers: Callable[..., list[FakeProvider]]) -> None:
    down, up = fake_providers(2)
    assert down.port != up.port
    down.stop()
    with pytest.raises(InternalServerError, match="Connection error"):  # refused: also a 500
        await _openai(down)
    assert (await _openai(up)).choices[0].message.content
    assert up.count(CHAT) == 1 and down.count() == 0


async def test_a_fixed_latency_delays_each_model_call(fake_providers: Callable[..., list[FakeProvider]]) -> None:
    (slow,) = fake_providers(1, latency_s=0.3)
    started = time.monotonic()
    await _openai(slow)
    assert time.monotonic() - started >= 0.3


async def test_hosted_vllm_sends_the_key_as_a_bearer_token(fake_provider: FakeProvider) -> None:
    kwargs: dict[str, Any] = {"api_base": fake_provider.url, "messages": MESSAGES, "max_retries": 0, "timeout": 3}
    await litellm.acompletion(model="hosted_vllm/test-model", api_key="sk-vllm", **kwargs)
    await litellm.acompletion(model="hosted_vllm/test-model", **kwargs)
    assert [s.headers["authorization"] for s in fake_provider.requests] == ["Bearer sk-vllm", "Bearer fake-api-key"]


def test_requests_are_recorded_and_reset(fake_provider: FakeProvider) -> None:
    with pytest.raises(ValueError, match="unknown fake provider behaviour 'teapot'"):
        fake_provider.push("teapot")  # type: ignore[arg-type]  # the point of the test
    fake_provider.push("error_500")
    assert httpx.get(f"{fake_provider.url}/models").json()["data"][0]["id"] == "test-model"
    assert fake_provider.count() == 1 and fake_provider.count(CHAT) == 0
    fake_provider.reset()
    assert fake_provider.requests == []
    answered = httpx.post(f"{fake_provider.url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert answered.status_code == 200, "reset empties the queue as well"


# ---------------------------------------------------------------------------------------- Ollama


def test_ollama_metadata_endpoints(fake_provider: FakeProvider) -> None:
    base = fake_provider.ollama_url
    (entry,) = httpx.get(f"{base}/api/tags").json()["models"]
    assert entry["name"] == entry["model"] == OLLAMA_MODEL
    assert entry["digest"] and entry["size"] > 0 and entry["modified_at"] and entry["details"]["format"] == "gguf"
    assert httpx.get(f"{base}/api/version").json()["version"]
    shown = httpx.post(f"{base}/api/show", json={"model": OLLAMA_MODEL}).json()
    assert any(k.endswith(".context_length") for k in shown["model_info"])
    assert httpx.post(f"{base}/api/show", json={"model": "llama3.1"}).status_code == 404


async def _ollama(fake: FakeProvider, model: str = f"ollama_chat/{OLLAMA_MODEL}", **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model=model, api_base=fake.ollama_url, messages=MESSAGES, timeout=2, max_retries=0, num_retries=0, **kwargs
    )


async def test_ollama_chat_answers_json_and_schema_formats(fake_provider: FakeProvider) -> None:
    schema_answer = await _ollama(fake_provider, response_format=_schema_format(SCHEMA))
    jsonschema.validate(json.loads(schema_answer.choices[0].message.content), SCHEMA)
    json_answer = await _ollama(fake_provider, response_format={"type": "json_object"})
    assert json.loads(json_answer.choices[0].message.content) == {"ok": True}
    generated = await _ollama(fake_provider, model=f"ollama/{OLLAMA_MODEL}", response_format={"type": "json_object"})
    assert json.loads(generated.choices[0].message.content) == {"ok": True}
    assert schema_answer.model == f"ollama_chat/{OLLAMA_MODEL}" and schema_answer.usage.completion_tokens >= 1
    chats = [s for s in fake_provider.requests if s.path == "/api/chat"]
    assert [s.body["format"] for s in chats] == [SCHEMA, "json"] and chats[0].body["stream"] is False
    assert fake_provider.count("/api/generate") == 1


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("rate_limit", RateLimitError),
        ("error_500", InternalServerError),
        ("close", APIConnectionError),  # unlike openai/, a dropped connection is a connection error
        ("garbage", APIConnectionError),
        ("reject_json_schema", BadRequestError),
    ],
)
async def test_ollama_failures_surface_as_litellms_errors(
    fake_provider: FakeProvider, behaviour: str, error: type[Exception]
) -> None:
    fake_provider.push(behaviour)  # type: ignore[arg-type]  # a Behaviour, from the table above
    with pytest.raises(error):
        await _ollama(fake_provider, response_format=_schema_format(SCHEMA))
    assert fake_provider.count("/api/chat") == 1


async def test_an_ollama_model_not_pulled_is_not_found(fake_provider: FakeProvider) -> None:
    with pytest.raises(NotFoundError, match="try pulling it first"):
        await _ollama(fake_provider, model="ollama_chat/llama3.1")


def test_ollama_streams_ndjson_unless_told_not_to(fake_provider: FakeProvider) -> None:
    body = {"model": OLLAMA_MODEL, "messages": MESSAGES, "format": "json"}
    lines = [
        json.loads(line) for line in httpx.post(f"{fake_provider.ollama_url}/api/chat", json=body).text.splitlines()
    ]
    assert [line["done"] for line in lines] == [False, True]
    assert json.loads(lines[0]["message"]["content"]) == {"ok": True} and lines[-1]["eval_count"] >= 1
