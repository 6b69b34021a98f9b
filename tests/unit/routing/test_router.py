"""Alias plans and LiteLLM fallback from an unreachable 'cloud' deployment to the local model."""

from __future__ import annotations

from datetime import datetime

import pytest

from factory.errors import RoutingError
from routing.aliases import EMBEDDED, SCRIPTED, Deployment, plan
from routing.base import CHAT_ALIASES, ChatRequest, Message, UsageRecord
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


def test_plans_put_cloud_first_and_the_embedded_model_last() -> None:
    assert all([d.model for d in chain] == [EMBEDDED] for chain in plan().values())
    full = plan(openai=True, anthropic=True, ollama_base="http://127.0.0.1:11434")
    assert set(full) == set(CHAT_ALIASES)
    assert [d.model.split("/")[0] for d in full["factory/architect"]] == [
        "openai",
        "anthropic",
        "ollama_chat",
        "factory-local",
    ]
    assert all(chain == [Deployment(SCRIPTED)] for chain in plan(scripted=True, openai=True).values())


async def test_an_unreachable_deployment_falls_back_to_the_local_one() -> None:
    routes = {
        alias: [Deployment("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1"), Deployment(SCRIPTED)]
        for alias in CHAT_ALIASES
    }
    ledger = ListLedger()
    model = RecordingModel(LiteLLMRouter(routes, scripted=ScriptedModel(), num_retries=0), ledger)
    response = await model.complete(request(), timeout_s=20)
    assert response.model == SCRIPTED and '"status": "COMPLETE"' in response.text
    [row] = ledger.rows
    assert (row.ok, row.model, row.alias, row.team, row.run_id) == (
        True,
        SCRIPTED,
        "factory/fast",
        "qa-engineering",
        "r1",
    )
    assert isinstance(row.created_at, datetime)


async def test_when_every_deployment_fails_the_error_names_them_and_the_ledger_records_it() -> None:
    routes = {alias: [Deployment("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1")] for alias in CHAT_ALIASES}
    ledger = ListLedger()
    model = RecordingModel(LiteLLMRouter(routes, num_retries=0), ledger)
    with pytest.raises(RoutingError, match=r"no deployment of factory/fast answered \(tried openai/gpt-4o-mini\)"):
        await model.complete(request(), timeout_s=20)
    assert [(r.ok, r.alias) for r in ledger.rows] == [(False, "factory/fast")] and ledger.rows[0].error
