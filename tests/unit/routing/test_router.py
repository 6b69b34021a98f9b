"""Default routing and the chain walk through LiteLLM: an unreachable 'cloud' deployment falls back
to the local one, visibly (the failed hop is on the response and the ledger row)."""

from __future__ import annotations

from datetime import datetime

import pytest

from factory.errors import RoutingError
from routing.aliases import default_routing
from routing.base import CHAT_ALIASES, ChatRequest, Message, UsageRecord
from routing.config import EMBEDDED, SCRIPTED, Deployment, RoutingConfig
from routing.ledger import RecordingModel
from routing.router import LiteLLMRouter
from routing.scripted import ScriptedModel


class ListLedger:
    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    async def record(self, usage: UsageRecord) -> None:
        self.rows.append(usage)


def request(alias: str = "factory/fast") -> ChatRequest:
    return ChatRequest(alias=alias, messages=[Message(role="user", content="hi")], team="qa-engineering", run_id="r1")  # type: ignore[arg-type]


def routing(*chain: Deployment) -> RoutingConfig:
    return RoutingConfig(aliases={alias: list(chain) for alias in CHAT_ALIASES})  # type: ignore[misc]


def test_defaults_put_cloud_first_and_the_embedded_model_last() -> None:
    assert all([d.model for d in chain] == [EMBEDDED] for chain in default_routing().aliases.values())
    full = default_routing(
        openai_key="OPENAI_API_KEY", anthropic_key="ANTHROPIC_API_KEY", ollama_base="http://127.0.0.1:11434"
    )
    assert set(full.aliases) == set(CHAT_ALIASES)
    assert [d.provider for d in full.chain("factory/architect")] == [
        "openai",
        "anthropic",
        "ollama_chat",
        "factory-local",
    ]
    assert full.chain("factory/coder")[0].key is not None and full.chain("factory/coder")[0].key.env == "OPENAI_API_KEY"
    scripted = default_routing(scripted=True, openai_key="OPENAI_API_KEY")
    assert all(chain == [Deployment(model=SCRIPTED)] for chain in scripted.aliases.values())


async def test_an_unreachable_deployment_falls_back_to_the_local_one() -> None:
    config = routing(
        Deployment(model="openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1"), Deployment(model=SCRIPTED)
    )
    ledger = ListLedger()
    model = RecordingModel(LiteLLMRouter(config, scripted=ScriptedModel()), ledger)
    response = await model.complete(request(), timeout_s=20)
    assert response.model == SCRIPTED and '"status": "COMPLETE"' in response.text
    [hop] = response.fallbacks
    assert (hop.deployment, hop.kind) == ("openai/gpt-4o-mini@http://127.0.0.1:9/v1", "connection")
    [row] = ledger.rows
    assert (row.ok, row.model, row.alias, row.team, row.run_id) == (
        True,
        SCRIPTED,
        "factory/fast",
        "qa-engineering",
        "r1",
    )
    assert row.fallbacks == response.fallbacks and row.cost_usd == 0.0
    assert isinstance(row.created_at, datetime)


async def test_when_every_deployment_fails_the_error_names_them_and_the_ledger_records_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from routing.config import KeyRef

    monkeypatch.setenv("FACTORY_TEST_KEY", "sk-test-unreachable-key")
    config = routing(
        Deployment(model="openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", key=KeyRef(env="FACTORY_TEST_KEY"))
    )
    ledger = ListLedger()
    model = RecordingModel(LiteLLMRouter(config), ledger)
    with pytest.raises(
        RoutingError, match=r"no deployment of factory/fast answered: openai/gpt-4o-mini@\S+ \(connection"
    ):
        await model.complete(request(), timeout_s=20)
    [row] = ledger.rows
    assert (row.ok, row.alias) == (False, "factory/fast") and row.error
    assert [(f.deployment, f.kind) for f in row.fallbacks] == [
        ("openai/gpt-4o-mini@http://127.0.0.1:9/v1", "connection")
    ]


async def test_a_call_that_fell_back_is_told_at_once_even_when_nothing_answered() -> None:
    from routing.base import ChatResponse, Fallback

    told: list[tuple[str | None, list[str]]] = []

    async def on_fallback(req: ChatRequest, response: ChatResponse | None, hops: list[Fallback]) -> None:
        told.append((response.model if response else None, [h.kind for h in hops]))

    hop = Fallback(deployment="openai/x@http://h/v1", kind="timeout", reason="no answer in 1s")

    class Answering:
        def __init__(self, hops: list[Fallback], fail: bool = False) -> None:
            self.hops, self.fail = hops, fail

        async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
            if self.fail:
                raise RoutingError("no deployment of factory/fast answered", fallbacks=self.hops)
            return ChatResponse(text="{}", alias=request.alias, model="openai/y", fallbacks=self.hops)

    ledger = ListLedger()
    await RecordingModel(Answering([hop]), ledger, on_fallback=on_fallback).complete(request(), timeout_s=1)
    await RecordingModel(Answering([]), ledger, on_fallback=on_fallback).complete(request(), timeout_s=1)
    with pytest.raises(RoutingError):
        await RecordingModel(Answering([hop], fail=True), ledger, on_fallback=on_fallback).complete(
            request(), timeout_s=1
        )
    assert told == [("openai/y", ["timeout"]), (None, ["timeout"])]

    async def broken(*_: object) -> None:
        raise RuntimeError("event stream down")

    response = await RecordingModel(Answering([hop]), ledger, on_fallback=broken).complete(request(), timeout_s=1)
    assert response.model == "openai/y"  # an event that cannot be sent never fails the call


async def test_local_models_are_free_in_litellms_own_accounting() -> None:
    """LiteLLM prices every call itself: the models of this machine are in its price map at 0 and
    their responses carry their cost, so it never searches its map for them (routing.providers)."""
    router = LiteLLMRouter(routing(Deployment(model=SCRIPTED)), scripted=ScriptedModel())
    litellm = await router.ready()
    for model in (SCRIPTED, EMBEDDED):
        info = litellm.get_model_info(model)
        assert (info["input_cost_per_token"], info["output_cost_per_token"], info["mode"]) == (0.0, 0.0, "chat")
    assert litellm.get_model_info("factory-local/minilm")["mode"] == "embedding"
    response = await router.complete(request(), timeout_s=20)
    assert response.model == SCRIPTED and response.cost_usd == 0.0
    reply = await litellm.acompletion(
        model=SCRIPTED, messages=[{"role": "user", "content": "hi"}], metadata={"factory_request": request()}
    )
    assert reply._hidden_params["response_cost"] == 0.0
    assert len(await router.embed(["a text"], timeout_s=20)) == 1
