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
