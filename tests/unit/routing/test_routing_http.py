"""The router against real HTTP through the real LiteLLM path (issue 14 items 1, 4, 5): a fake
OpenAI-compatible provider answers, fails every way providers fail, and the same call moves on to
the next deployment, visibly; a failing deployment cools down; cost comes from LiteLLM's price map,
the configured prices, or 0 for local models; an Ollama deployment speaks Ollama's API."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import jsonschema
import pytest

from factory.errors import RoutingError
from routing.base import CHAT_ALIASES, ChatRequest, Message
from routing.config import SCRIPTED, Cooldown, Deployment, KeyRef, RoutingConfig
from routing.cooldowns import Cooldowns
from routing.ollama_models import ollama_servers
from routing.probe import probe
from routing.router import LiteLLMRouter
from routing.scripted import ScriptedModel
from tests.fakeprovider import FakeProvider

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "ok": {"type": "boolean"}},
    "required": ["title", "ok"],
    "additionalProperties": False,
}


def config(*chain: Deployment, cooldown: Cooldown | None = None) -> RoutingConfig:
    return RoutingConfig(
        aliases={alias: list(chain) for alias in CHAT_ALIASES},  # type: ignore[misc]
        cooldown=cooldown or Cooldown(),
    )


def ask(schema: dict[str, Any] | None = SCHEMA, run_id: str | None = None) -> ChatRequest:
    return ChatRequest(
        alias="factory/coder",
        messages=[Message(role="system", content="You are a test."), Message(role="user", content="Say ok.")],
        json_schema=schema,
        team="backend-engineering",
        run_id=run_id,
    )


def at(fake: FakeProvider, model: str = "openai/test-model", **extra: Any) -> Deployment:
    return Deployment(model=model, api_base=fake.url, **extra)


async def test_happy_path_asks_for_the_json_schema_and_gets_a_valid_instance(fake_provider: FakeProvider) -> None:
    router = LiteLLMRouter(config(at(fake_provider, structured="json_schema")))
    response = await router.complete(ask(), timeout_s=10)
    jsonschema.validate(json.loads(response.text), SCHEMA)
    [seen] = fake_provider.requests
    assert seen.body["response_format"]["type"] == "json_schema"
    assert seen.body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert response.fallbacks == [] and response.model == "openai/test-model" and response.tokens_in > 0


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        ("rate_limit", "rate_limit"),
        ("error_500", "server_error"),
        ("hang", "timeout"),
        ("close", "connection"),
        ("garbage", "bad_output"),
    ],
)
async def test_each_failure_moves_the_same_call_to_the_next_deployment(
    fake_providers: Any, behaviour: str, kind: str
) -> None:
    first, second = fake_providers(2)
    first.default = behaviour
    router = LiteLLMRouter(config(at(first, timeout_s=1.5), at(second)))
    response = await router.complete(ask(), timeout_s=10)
    jsonschema.validate(json.loads(response.text), SCHEMA)
    assert [(f.deployment, f.kind) for f in response.fallbacks] == [(f"openai/test-model@{first.url}", kind)]
    assert first.count("/v1/chat/completions") == 1  # no retries inside a deployment: the chain is the retry
    assert second.count("/v1/chat/completions") == 1


async def test_a_cooled_deployment_is_not_called_again_during_an_outage(fake_providers: Any) -> None:
    first, second = fake_providers(2)
    first.default = "error_500"
    cooled: list[tuple[str, float]] = []
    router = LiteLLMRouter(
        config(at(first), at(second), cooldown=Cooldown(allowed_fails=0, cooldown_s=30)),
        cooldowns=Cooldowns(on_cool=lambda d, s, _r: cooled.append((d, s))),
    )
    responses = [await router.complete(ask(), timeout_s=10) for _ in range(5)]
    assert first.count("/v1/chat/completions") == 1 and second.count("/v1/chat/completions") == 5
    assert [f.kind for f in responses[1].fallbacks] == ["cooling"]  # skipped, and said so
    assert cooled == [(f"openai/test-model@{first.url}", 30.0)]
    assert [c.deployment for c in router.cooldowns.cooling()] == [f"openai/test-model@{first.url}"]


async def test_allowed_fails_tolerate_blips_before_cooling(fake_providers: Any) -> None:
    first, second = fake_providers(2)
    first.default = "error_500"
    router = LiteLLMRouter(config(at(first), at(second), cooldown=Cooldown(allowed_fails=2, cooldown_s=30)))
    for _ in range(6):
        await router.complete(ask(), timeout_s=10)
    assert first.count("/v1/chat/completions") == 3  # two tolerated, the third cools it


async def test_a_429_cools_for_its_retry_after_then_the_deployment_is_probed_again(fake_providers: Any) -> None:
    first, second = fake_providers(2, retry_after_s=1)
    first.push("rate_limit")
    router = LiteLLMRouter(config(at(first), at(second), cooldown=Cooldown(cooldown_s=600)))
    assert [f.kind for f in (await router.complete(ask(), timeout_s=10)).fallbacks] == ["rate_limit"]
    assert [f.kind for f in (await router.complete(ask(), timeout_s=10)).fallbacks] == ["cooling"]
    await asyncio.sleep(1.1)
    assert (await router.complete(ask(), timeout_s=10)).fallbacks == []  # Retry-After, not the 600 s policy
    assert first.count("/v1/chat/completions") == 2


async def test_when_every_deployment_fails_the_error_names_each_and_why(fake_providers: Any) -> None:
    first, second = fake_providers(2, default="error_500")
    router = LiteLLMRouter(config(at(first), at(second)))
    with pytest.raises(RoutingError) as caught:
        await router.complete(ask(), timeout_s=10)
    assert [f.kind for f in caught.value.fallbacks] == ["server_error", "server_error"]
    assert first.url in str(caught.value) and second.url in str(caught.value)


async def test_a_provider_without_json_schema_output_is_asked_in_json_mode_with_the_schema_in_the_prompt(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.default = "reject_json_schema"
    router = LiteLLMRouter(config(at(fake_provider, model="openai/gpt-4o-mini")))  # auto: LiteLLM says schema
    response = await router.complete(ask(), timeout_s=10)
    jsonschema.validate(json.loads(response.text), SCHEMA)
    first, second = fake_provider.requests
    assert first.body["response_format"]["type"] == "json_schema"
    assert second.body["response_format"] == {"type": "json_object"}
    assert json.dumps(SCHEMA, separators=(",", ":")) in second.body["messages"][0]["content"]
    assert response.fallbacks == []


async def test_json_object_mode_configured_sends_the_schema_in_the_prompt(fake_provider: FakeProvider) -> None:
    router = LiteLLMRouter(config(at(fake_provider, structured="json_object")))
    response = await router.complete(ask(), timeout_s=10)
    jsonschema.validate(json.loads(response.text), SCHEMA)
    [seen] = fake_provider.requests
    assert seen.body["response_format"] == {"type": "json_object"}


async def test_cost_from_the_price_map_from_configured_prices_and_zero_for_local(
    fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litellm

    monkeypatch.setenv("FACTORY_TEST_OPENAI_KEY", "sk-test-0123456789")
    mapped = at(fake_provider, model="openai/gpt-4o-mini", key=KeyRef(env="FACTORY_TEST_OPENAI_KEY"))
    priced = at(fake_provider, model="hosted_vllm/qwen-coder", price_in_per_m=2.0, price_out_per_m=6.0)
    unpriced = at(fake_provider, model="hosted_vllm/qwen-coder")
    for deployment, expect in ((mapped, "map"), (priced, "configured"), (unpriced, "zero")):
        response = await LiteLLMRouter(config(deployment)).complete(ask(), timeout_s=10)
        tin, tout = response.tokens_in, response.tokens_out
        assert tin > 0 and tout > 0
        if expect == "map":
            prices = litellm.model_cost["gpt-4o-mini"]
            want = tin * prices["input_cost_per_token"] + tout * prices["output_cost_per_token"]
            assert response.cost_usd == pytest.approx(want) and response.cost_usd > 0
        elif expect == "configured":
            assert response.cost_usd == pytest.approx((tin * 2.0 + tout * 6.0) / 1e6)
        else:
            assert response.cost_usd == 0.0
    local = await LiteLLMRouter(config(Deployment(model=SCRIPTED)), scripted=ScriptedModel()).complete(
        ask(), timeout_s=10
    )
    assert local.cost_usd == 0.0


async def test_the_key_is_sent_by_reference_and_never_quoted_back(
    fake_providers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-live-7f3a9c2e5b1d4f60a8b9"
    monkeypatch.setenv("FACTORY_TEST_HOSTILE_KEY", key)
    first, second = fake_providers(2)
    first.default = "echo_key_error"
    router = LiteLLMRouter(config(at(first, key=KeyRef(env="FACTORY_TEST_HOSTILE_KEY")), at(second)))
    response = await router.complete(ask(), timeout_s=10)
    assert first.requests[0].headers["authorization"] == f"Bearer {key}"
    [hop] = response.fallbacks
    assert key not in hop.reason and key not in response.model_dump_json()
    # A keyless OpenAI-compatible server never receives the OpenAI key of the environment.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-openai-should-stay-home")
    await router.complete(ask(), timeout_s=10)
    assert all("sk-env-openai" not in r.headers.get("authorization", "") for r in second.requests)


async def test_a_missing_key_skips_the_deployment_without_calling_it(fake_providers: Any) -> None:
    first, second = fake_providers(2)
    os.environ.pop("FACTORY_TEST_UNSET_KEY", None)
    router = LiteLLMRouter(config(at(first, key=KeyRef(env="FACTORY_TEST_UNSET_KEY")), at(second)))
    response = await router.complete(ask(), timeout_s=10)
    assert [f.kind for f in response.fallbacks] == ["no_key"] and "env:FACTORY_TEST_UNSET_KEY" in response.fallbacks[
        0
    ].reason
    assert first.count() == 0


async def test_a_run_keeps_the_routing_it_started_with(fake_providers: Any) -> None:
    old, new = fake_providers(2)
    pinned = config(at(old))
    current = config(at(new))

    async def run_routing(run_id: str) -> RoutingConfig | None:
        return pinned if run_id == "run-old" else None

    async def now() -> RoutingConfig:
        return current

    router = LiteLLMRouter(current, current=now, run_routing=run_routing)
    await router.complete(ask(run_id="run-old"), timeout_s=10)
    await router.complete(ask(run_id="run-new"), timeout_s=10)
    await router.complete(ask(), timeout_s=10)
    assert (old.count("/v1/chat/completions"), new.count("/v1/chat/completions")) == (1, 2)


async def test_an_ollama_deployment_speaks_ollamas_api(fake_provider: FakeProvider) -> None:
    deployment = Deployment(model="ollama_chat/qwen2.5:0.5b", api_base=fake_provider.ollama_url)
    response = await LiteLLMRouter(config(deployment)).complete(ask(), timeout_s=10)
    jsonschema.validate(json.loads(response.text), SCHEMA)
    assert any(r.path == "/api/chat" for r in fake_provider.requests) and response.cost_usd == 0.0
    missing = Deployment(model="ollama_chat/llama3.1", api_base=fake_provider.ollama_url)
    [server] = await ollama_servers(config(deployment, missing))
    assert server.error is None and server.missing == ["llama3.1"]
    assert [m["name"] for m in server.models] == ["qwen2.5:0.5b"]


async def test_probe_reports_reachable_latency_and_structured_output(fake_providers: Any) -> None:
    good, bad = fake_providers(2)
    bad.stop()  # down: its port refuses connections
    router = LiteLLMRouter(config(at(good)))
    ok = await probe(router, at(good), timeout_s=5)
    assert (ok["reachable"], ok["ok"], ok["structured"]) == (True, True, True) and ok["latency_ms"] > 0
    down = await probe(router, at(bad), timeout_s=5)
    assert (down["reachable"], down["ok"], down["kind"]) == (False, False, "connection")


_FALLBACK_TO_EMBEDDED = """
import asyncio, json, sys
from routing.base import CHAT_ALIASES, ChatRequest, Message
from routing.config import EMBEDDED, Deployment, RoutingConfig
from routing.embedded import EmbeddedModel
from routing.router import LiteLLMRouter
from teams.roster import team
from teams.schema import SchemaBounds, result_schema

chain = [Deployment(model="openai/test-model", api_base=sys.argv[1]), Deployment(model=EMBEDDED)]
config = RoutingConfig(aliases={alias: chain for alias in CHAT_ALIASES})
request = ChatRequest(
    alias="factory/coder", team="backend-engineering", max_tokens=200,
    messages=[Message(role="system", content="You are the backend team."),
              Message(role="user", content="A notes app.")],
    json_schema=result_schema(team("backend-engineering"), SchemaBounds()),  # the cloud bounds
)
embedded = EmbeddedModel(n_ctx=4096)
response = asyncio.run(LiteLLMRouter(config, embedded=embedded).complete(request, timeout_s=300))
embedded.close()
print(json.dumps({"model": response.model, "kinds": [f.kind for f in response.fallbacks], "text": response.text,
                  "cost": response.cost_usd}))
"""


@pytest.mark.slow
def test_cloud_falls_back_to_the_real_embedded_model_with_the_cloud_schema(fake_provider: FakeProvider) -> None:
    """Issue 14 item 7: the embedded model, reached by fallback, is handed the cloud request's full
    TaskResult schema; it must answer (its grammar bounded), not crash the process (SIGSEGV before:
    run in a subprocess, so a crash fails this test instead of killing the test session)."""
    import subprocess
    import sys

    fake_provider.default = "error_500"
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_TO_EMBEDDED, fake_provider.url],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kinds"] == ["server_error"] and out["model"] == "factory-local/smollm2"
    assert out["text"] and out["cost"] == 0.0


async def test_all_cooling_and_nothing_local_tries_the_one_recovering_first(fake_providers: Any) -> None:
    first, second = fake_providers(2, default="error_500")
    router = LiteLLMRouter(config(at(first), at(second), cooldown=Cooldown(cooldown_s=600)))
    with pytest.raises(RoutingError):
        await router.complete(ask(), timeout_s=10)  # both fail, both cool
    first.default = "ok"
    response = await router.complete(ask(), timeout_s=10)  # not refused outright for ten minutes
    assert [f.kind for f in response.fallbacks] == [] and first.count("/v1/chat/completions") == 2
    assert second.count("/v1/chat/completions") == 1


async def test_a_429_without_a_usable_retry_after_cools_by_the_policy(fake_providers: Any) -> None:
    first, second = fake_providers(2, retry_after_s=0)
    first.default = "rate_limit"
    router = LiteLLMRouter(config(at(first), at(second), cooldown=Cooldown(cooldown_s=600)))
    for _ in range(3):
        await router.complete(ask(), timeout_s=10)
    assert first.count("/v1/chat/completions") == 1


async def test_a_schema_refusal_is_remembered(fake_provider: FakeProvider) -> None:
    fake_provider.default = "reject_json_schema"
    router = LiteLLMRouter(config(at(fake_provider, model="openai/gpt-4o-mini")))
    for _ in range(3):
        jsonschema.validate(json.loads((await router.complete(ask(), timeout_s=10)).text), SCHEMA)
    assert fake_provider.count("/v1/chat/completions") == 4  # refused once, then JSON mode straight away
