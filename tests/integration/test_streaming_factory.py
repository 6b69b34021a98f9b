"""``Factory.model.stream`` — what the chat's Team chat calls — through the real wiring: the routing
from the environment (a fake provider over HTTP that fails, then one that trickles), LiteLLM, the
usage ledger in PostgreSQL and the run's budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from factory.errors import BudgetExceeded
from factory.settings import Settings
from factory.wiring import open_factory
from routing.base import CHAT_ALIASES, ChatRequest, ChatResponse, Message
from tests.fakeprovider import FakeProvider

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, pg_url: str, redis_base_url: str, redis_prefix: str, *chain: FakeProvider) -> Settings:
    routing = {"aliases": {a: [{"model": "openai/test-model", "api_base": f.url} for f in chain] for a in CHAT_ALIASES}}
    given: dict[str, Any] = {"FACTORY_ROUTING": json.dumps(routing)}  # set by its alias, as the environment does
    return Settings(
        data_dir=tmp_path, database_url=pg_url, redis_url=redis_base_url, redis_prefix=redis_prefix,
        scripted_model=None, openai_api_key=None, anthropic_api_key=None, ollama_api_base=None,
        budget_run_tokens=1, **given,
    )  # fmt: skip


def _ask(run_id: str | None = None) -> ChatRequest:
    return ChatRequest(
        alias="factory/fast", messages=[Message(role="user", content="What does your team do?")],
        team="qa-engineering", run_id=run_id, purpose="chat",
    )  # fmt: skip


async def test_the_factory_model_streams_through_routing_into_the_ledger(
    pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path, redis: object, fake_providers: Any
) -> None:
    down, up = fake_providers(2)
    down.default = "error_500"
    up.default = "trickle"
    settings = _settings(tmp_path, pg_url, redis_base_url, redis_prefix, down, up)
    async with open_factory(settings) as factory:
        items = [item async for item in factory.model.stream(_ask("run-s1"), timeout_s=30)]
        chunks = [c for c in items[:-1] if isinstance(c, str)]
        final = items[-1]
        assert len(chunks) == len(items) - 1 > 3 and isinstance(final, ChatResponse)
        assert final.text == "".join(chunks) and [f.kind for f in final.fallbacks] == ["server_error"]
        [row] = await factory.store.usage("run-s1")
        assert row.ok and row.purpose == "chat" and row.model == "openai/test-model"
        assert row.tokens_out == final.tokens_out > 0 and [f.kind for f in row.fallbacks] == ["server_error"]
        # The run's 1-token budget is now spent: the next streamed call of the run is refused before it starts.
        with pytest.raises(BudgetExceeded):
            async for _ in factory.model.stream(_ask("run-s1"), timeout_s=30):
                pass
    assert up.count("/v1/chat/completions") == 1
