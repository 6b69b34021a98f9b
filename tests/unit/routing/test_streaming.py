"""Streaming through the routing (``StreamingChatModel``): chunks as they arrive, through the real
LiteLLM path against a fake provider over HTTP, the scripted model and the embedded SmolLM2; a
deployment failing before its first chunk is skipped (visibly), one failing after it breaks the
answer off with ``RoutingError`` (no fallback mid-answer); the ledger gets one row, budgets hold."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from factory.errors import BudgetExceeded, RoutingError
from routing.base import CHAT_ALIASES, ChatRequest, ChatResponse, Message, Spend, StreamingChatModel, UsageRecord
from routing.budget import BudgetedModel, BudgetLimits
from routing.config import EMBEDDED, SCRIPTED, Cooldown, Deployment, KeyRef, RoutingConfig
from routing.ledger import RecordingModel
from routing.router import LiteLLMRouter
from routing.scripted import ScriptedModel
from routing.streaming import StreamInterrupted
from tests.fakeprovider import CHUNKS_BEFORE_BREAK, FakeProvider

QUESTION = "Tell me about the factory."
ANSWER_WORDS = f"Fake answer from test-model to: {QUESTION}".split()


class ListLedger:
    """A usage ledger in a list, with the totals budgets read."""

    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    async def record(self, usage: UsageRecord) -> None:
        self.rows.append(usage)

    async def spent(self, run_id: str, team: str | None = None) -> Spend:
        rows = [r for r in self.rows if r.run_id == run_id and (team is None or r.team == team)]
        return Spend(tokens=sum(r.tokens_in + r.tokens_out for r in rows), cost_usd=sum(r.cost_usd for r in rows))


def config(*chain: Deployment, cooldown: Cooldown | None = None) -> RoutingConfig:
    return RoutingConfig(
        aliases={alias: list(chain) for alias in CHAT_ALIASES},
        cooldown=cooldown or Cooldown(),
    )


def ask(run_id: str | None = None, **extra: Any) -> ChatRequest:
    messages = [Message(role="system", content="You are a team."), Message(role="user", content=QUESTION)]
    return ChatRequest(
        alias="factory/fast", messages=messages, team="backend-engineering", run_id=run_id, purpose="chat", **extra
    )


def at(fake: FakeProvider, **extra: Any) -> Deployment:
    return Deployment(model="openai/test-model", api_base=fake.url, **extra)


async def collect(
    model: StreamingChatModel, request: ChatRequest, timeout_s: float = 10
) -> tuple[list[tuple[float, str]], ChatResponse]:
    """Every chunk with the seconds since the call, and the final response (checked to come last, once)."""
    started = time.perf_counter()
    chunks: list[tuple[float, str]] = []
    finals: list[ChatResponse] = []
    async for item in model.stream(request, timeout_s=timeout_s):
        assert not finals, "nothing may follow the final ChatResponse"
        if isinstance(item, ChatResponse):
            finals.append(item)
        else:
            chunks.append((time.perf_counter() - started, item))
    [final] = finals
    return chunks, final


# -- through LiteLLM, over HTTP ------------------------------------------------------------------


async def test_chunks_arrive_as_the_provider_sends_them(fake_provider: FakeProvider) -> None:
    fake_provider.default = "trickle"
    fake_provider.chunk_s = 0.15
    router = LiteLLMRouter(config(at(fake_provider, price_in_per_m=2.0, price_out_per_m=8.0)))
    await router.ready()  # LiteLLM's import is not part of what is measured
    chunks, final = await collect(router, ask())
    assert [text.strip() for _, text in chunks] == ANSWER_WORDS
    # Handed on as they came: spread over the provider's pauses, not delivered together at the end.
    spread = chunks[-1][0] - chunks[0][0]
    assert spread > 0.8 * 0.15 * (len(chunks) - 1), f"{len(chunks)} chunks came within {spread:.2f}s: not incremental"
    total = chunks[-1][0]
    assert final.text == "".join(text for _, text in chunks)
    assert final.model == "openai/test-model" and final.alias == "factory/fast" and final.fallbacks == []
    assert final.tokens_in > 0 and final.tokens_out > 0
    assert final.cost_usd == pytest.approx((final.tokens_in * 2.0 + final.tokens_out * 8.0) / 1e6)
    assert final.latency_ms >= total * 1000 * 0.9
    [seen] = fake_provider.requests
    assert seen.body["stream"] is True and seen.body["stream_options"] == {"include_usage": True}
    assert "response_format" not in seen.body


async def test_a_provider_that_reports_no_usage_is_counted(fake_provider: FakeProvider) -> None:
    fake_provider.default = "no_usage"
    router = LiteLLMRouter(config(at(fake_provider, price_in_per_m=1.0, price_out_per_m=1.0)))
    _, final = await collect(router, ask())
    assert final.tokens_in > 0 and final.tokens_out > 0 and final.cost_usd > 0


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [("error_500", "server_error"), ("rate_limit", "rate_limit"), ("hang", "timeout"), ("garbage", "bad_output")],
)
async def test_a_deployment_failing_before_its_first_chunk_is_skipped(
    fake_providers: Any, behaviour: str, kind: str
) -> None:
    first, second = fake_providers(2)
    first.default = behaviour
    router = LiteLLMRouter(config(at(first, timeout_s=1.0), at(second)))
    chunks, final = await collect(router, ask())
    assert "".join(t for _, t in chunks) == final.text and final.text.startswith("Fake answer from test-model")
    assert [(f.deployment, f.kind) for f in final.fallbacks] == [(f"openai/test-model@{first.url}", kind)]
    assert first.count("/v1/chat/completions") == 1 and second.count("/v1/chat/completions") == 1


async def test_a_refused_connection_and_a_missing_key_are_skipped(
    fake_providers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    down, up = fake_providers(2)
    down.stop()  # its port now refuses connections
    monkeypatch.delenv("FACTORY_TEST_NO_SUCH_KEY", raising=False)
    keyless = Deployment(model="openai/gpt-4o-mini", key=KeyRef(env="FACTORY_TEST_NO_SUCH_KEY"))
    router = LiteLLMRouter(config(keyless, at(down), at(up)))
    _, final = await collect(router, ask())
    assert [f.kind for f in final.fallbacks] == ["no_key", "connection"]
    assert up.count("/v1/chat/completions") == 1


async def test_a_drop_after_the_first_chunks_breaks_the_answer_off_without_falling_back(fake_providers: Any) -> None:
    first, second = fake_providers(2)
    first.default = "drop_mid_stream"
    router = LiteLLMRouter(config(at(first, price_in_per_m=1.0, price_out_per_m=1.0), at(second)))
    shown: list[str] = []
    with pytest.raises(RoutingError, match="broke off mid-way") as caught:
        async for item in router.stream(ask(), timeout_s=10):
            assert isinstance(item, str), "a broken stream yields no final response"
            shown.append(item)
    assert [w.strip() for w in shown] == ANSWER_WORDS[:CHUNKS_BEFORE_BREAK]
    assert second.count("/v1/chat/completions") == 0  # no silent fallback mid-answer
    error = caught.value
    assert isinstance(error, StreamInterrupted)
    assert [(f.deployment, f.kind) for f in error.fallbacks] == [(f"openai/test-model@{first.url}", "connection")]
    assert error.response.text == "".join(shown) and error.response.tokens_out > 0 and error.response.cost_usd > 0


async def test_a_stream_that_goes_silent_mid_way_ends_at_the_idle_timeout(fake_providers: Any) -> None:
    first, second = fake_providers(2, hang_s=30)
    first.default = "stall_mid_stream"
    router = LiteLLMRouter(config(at(first), at(second)), stream_idle_s=0.5)
    shown: list[str] = []
    started = time.perf_counter()
    with pytest.raises(RoutingError, match=r"timeout: no chunk after 2 chunks within 0.5s"):
        async for item in router.stream(ask(), timeout_s=10):
            shown.append(str(item))
    assert time.perf_counter() - started < 10, "the idle timeout, not the call's, ended the wait"
    assert len(shown) == CHUNKS_BEFORE_BREAK and second.count("/v1/chat/completions") == 0


async def test_a_deployment_failing_before_its_first_chunk_cools_down(fake_providers: Any) -> None:
    first, second = fake_providers(2)
    first.default = "error_500"
    router = LiteLLMRouter(config(at(first), at(second), cooldown=Cooldown(allowed_fails=0, cooldown_s=30)))
    _, one = await collect(router, ask())
    _, two = await collect(router, ask())
    assert [f.kind for f in one.fallbacks] == ["server_error"] and [f.kind for f in two.fallbacks] == ["cooling"]
    assert first.count("/v1/chat/completions") == 1 and second.count("/v1/chat/completions") == 2


async def test_no_deployment_answering_raises_routing_error_naming_them(fake_providers: Any) -> None:
    first, second = fake_providers(2, default="error_500")
    router = LiteLLMRouter(config(at(first), at(second)))
    with pytest.raises(RoutingError, match="no deployment of factory/fast answered") as caught:
        await collect(router, ask())
    assert [f.kind for f in caught.value.fallbacks] == ["server_error", "server_error"]


async def test_a_run_streams_through_the_routing_it_started_with(fake_providers: Any) -> None:
    pinned, current = fake_providers(2)

    async def run_routing(run_id: str) -> RoutingConfig | None:
        return config(at(pinned)) if run_id == "run-1" else None

    router = LiteLLMRouter(config(at(current)), run_routing=run_routing)
    await collect(router, ask(run_id="run-1"))
    await collect(router, ask())
    assert pinned.count("/v1/chat/completions") == 1 and current.count("/v1/chat/completions") == 1


async def test_a_reader_that_stops_closes_the_connection_and_is_recorded(fake_provider: FakeProvider) -> None:
    fake_provider.default = "trickle"
    ledger = ListLedger()
    model = RecordingModel(LiteLLMRouter(config(at(fake_provider))), ledger)
    items = model.stream(ask(run_id="r1"), timeout_s=10)
    assert isinstance(await anext(items), str)
    await items.aclose()  # type: ignore[attr-defined]  # an async generator: the operator pressed stop
    [row] = ledger.rows
    assert not row.ok and row.error is not None and "stopped the stream" in row.error


# -- the structured-output refusal -----------------------------------------------------------------


async def test_streaming_refuses_a_json_schema_before_any_call(fake_provider: FakeProvider) -> None:
    ledger = ListLedger()
    router = LiteLLMRouter(config(at(fake_provider)), scripted=ScriptedModel())
    schema = {"type": "object"}
    budgeted = BudgetedModel(router, ledger, BudgetLimits(), _no_grants)
    models: list[StreamingChatModel] = [router, ScriptedModel(), RecordingModel(router, ledger), budgeted]
    for model in models:
        with pytest.raises(ValueError, match="streaming is for free text"):
            await collect(model, ask(json_schema=schema))
    assert fake_provider.requests == [] and ledger.rows == []


async def _no_grants(run_id: str) -> int:
    return 0


# -- the scripted model ------------------------------------------------------------------------


async def test_the_scripted_model_streams_word_by_word_through_the_router() -> None:
    scripted = ScriptedModel(latency_s=0.8)
    router = LiteLLMRouter(config(Deployment(model=SCRIPTED)), scripted=scripted)
    chunks, final = await collect(router, ask())
    assert len(chunks) >= 5
    assert chunks[0][0] < chunks[-1][0] / 3, "the first word must come well before the last"
    assert final.text == "".join(t for _, t in chunks) and final.text.startswith("Scripted reply from backend")
    assert final.model == SCRIPTED and final.cost_usd == 0.0 and final.tokens_in > 0 and final.tokens_out > 0
    _, again = await collect(ScriptedModel(), ask())
    assert again.text == final.text  # deterministic


async def test_the_scripted_model_streams_a_teams_queued_answer() -> None:
    scripted = ScriptedModel({"teams": {"backend-engineering": ["First queued answer, as is.", {"n": 1}]}})
    first = await collect(scripted, ask())
    second = await collect(scripted, ask())
    assert [t for _, t in first[0]] == ["First ", "queued ", "answer, ", "as ", "is."]
    assert first[1].text == "First queued answer, as is." and second[1].text == '{"n": 1}'


async def test_a_failing_first_deployment_falls_back_to_the_scripted_model() -> None:
    router = LiteLLMRouter(
        config(Deployment(model="openai/test-model", api_base="http://127.0.0.1:9/v1"), Deployment(model=SCRIPTED)),
        scripted=ScriptedModel(),
    )
    _, final = await collect(router, ask())
    assert final.model == SCRIPTED and [f.kind for f in final.fallbacks] == ["connection"]


# -- ledger and budgets ----------------------------------------------------------------------------


async def test_the_ledger_gets_one_row_with_the_fallbacks(fake_providers: Any) -> None:
    first, second = fake_providers(2)
    first.default = "error_500"
    ledger = ListLedger()
    model = RecordingModel(LiteLLMRouter(config(at(first), at(second, price_in_per_m=3.0))), ledger)
    _, final = await collect(model, ask(run_id="r1"))
    [row] = ledger.rows
    assert row.ok and row.run_id == "r1" and row.team == "backend-engineering" and row.purpose == "chat"
    assert (row.model, row.tokens_in, row.tokens_out, row.cost_usd) == (
        final.model, final.tokens_in, final.tokens_out, final.cost_usd,
    )  # fmt: skip
    assert row.cost_usd > 0 and [f.kind for f in row.fallbacks] == ["server_error"]


async def test_a_broken_stream_is_one_failed_row_with_what_its_part_cost(fake_provider: FakeProvider) -> None:
    fake_provider.default = "drop_mid_stream"
    ledger = ListLedger()
    told: list[int] = []

    async def on_fallback(request: ChatRequest, response: ChatResponse | None, hops: list[Any]) -> None:
        told.append(len(hops))

    model = RecordingModel(LiteLLMRouter(config(at(fake_provider))), ledger, on_fallback=on_fallback)
    with pytest.raises(RoutingError):
        await collect(model, ask(run_id="r1"))
    [row] = ledger.rows
    assert not row.ok and row.error is not None and "broke off mid-way" in row.error
    assert row.model == "openai/test-model" and row.tokens_out > 0
    assert [f.kind for f in row.fallbacks] == ["connection"] and told == [1]


async def test_a_spent_budget_refuses_the_stream_before_it_starts(fake_provider: FakeProvider) -> None:
    ledger = ListLedger()
    recorded = RecordingModel(LiteLLMRouter(config(at(fake_provider))), ledger)
    model = BudgetedModel(recorded, ledger, BudgetLimits(run_tokens=10), _no_grants)
    await collect(model, ask(run_id="r1"))  # under budget: streams, and its tokens are recorded
    assert ledger.rows[0].tokens_in + ledger.rows[0].tokens_out >= 10
    with pytest.raises(BudgetExceeded, match="run r1 has used"):
        await collect(model, ask(run_id="r1"))
    await collect(model, ask())  # no run: no budget to check
    assert fake_provider.count("/v1/chat/completions") == 2 and len(ledger.rows) == 2


async def test_a_model_that_cannot_stream_is_refused_saying_so() -> None:
    class WholeOnly:
        async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
            raise AssertionError("not called")

    with pytest.raises(TypeError, match="WholeOnly cannot stream"):
        await collect(RecordingModel(WholeOnly(), ListLedger()), ask())


# -- the embedded model --------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_embedded_model_streams_really_without_blocking_the_loop() -> None:
    from routing.embedded import EmbeddedModel

    embedded = EmbeddedModel(n_ctx=1024)
    router = LiteLLMRouter(config(Deployment(model=EMBEDDED)), embedded=embedded)
    ticks = 0
    streaming = True

    async def tick() -> None:
        nonlocal ticks
        while streaming:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        chunks, final = await collect(router, ask(max_tokens=16, temperature=0.0), timeout_s=120)
    finally:
        streaming = False
        await ticker
    assert len(chunks) >= 3 and final.text == "".join(t for _, t in chunks)
    assert final.model == EMBEDDED and final.cost_usd == 0.0
    assert 0 < final.tokens_out <= 16 and final.tokens_in > 10
    assert ticks >= 10, f"the event loop ran {ticks} times while the model generated: it was blocked"
    # A reader that leaves after one chunk stops the generation at its next token: the model is free
    # long before the 300 tokens asked for (~7 s here) could have been generated, and answers again.
    story = ask(max_tokens=300, temperature=0.0).model_copy(
        update={"messages": [Message(role="user", content="Write a very long story about a factory, in detail.")]}
    )
    items = router.stream(story, timeout_s=120)
    assert isinstance(await anext(items), str)
    left = time.perf_counter()
    await items.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(embedded._lock.acquire, timeout=60)
    freed_s = time.perf_counter() - left
    embedded._lock.release()
    _, again = await collect(router, ask(max_tokens=8, temperature=0.0), timeout_s=120)
    assert again.text and again.tokens_out <= 8
    assert freed_s < 2.0, f"the model was held {freed_s:.1f}s after its reader left: the generation went on"
    embedded.close()
