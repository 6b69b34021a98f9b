"""``observability.text`` and the stores' boundaries outside ``teams`` that use it: memory items, the
memory extractor's answer, the usage ledger and a provider's model name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memory.bank_memory import InMemoryMemoryStore
from memory.base import MemoryKind, NewMemory
from memory.gateway import MemoryGateway
from memory.packing import compact
from memory.retention import ModelExtractor, StageOutcome
from observability.text import must_be_storable, storable, storable_data, unstorable
from routing.base import ChatRequest, ChatResponse, Message, Spend, UsageRecord
from routing.ledger import RecordingModel


@pytest.mark.parametrize(
    ("text", "why"),
    [("a\x00b", "NUL character"), ("a\ud800", "lone surrogate (\\ud800)"), ("\udc80", "lone surrogate (\\udc80)")],
)
def test_unstorable_text_is_named_and_replaced(text: str, why: str) -> None:
    problem = unstorable(text)
    assert problem is not None and why in problem and unstorable(problem) is None
    with pytest.raises(ValueError, match=why.split(" (")[0]):
        must_be_storable(text)
    fixed = storable(text)
    assert unstorable(fixed) is None and "\ufffd" in fixed
    fixed.encode("utf-8")  # what the driver does: it no longer fails


def test_storable_text_is_left_alone() -> None:
    for text in ["", "plain", "tab\tnew\nline \x1b[2J", "\U0001f600 \ufffd é"]:
        assert unstorable(text) is None and storable(text) == text and must_be_storable(text) == text


def test_storable_data_reaches_keys_and_nested_values() -> None:
    data = {"k\x00": ["v\ud800", {"deep": "\x00"}], "n": 1, "t": ("x\x00",)}
    fixed = storable_data(data)
    assert unstorable(json.dumps(fixed, ensure_ascii=False)) is None and fixed["n"] == 1
    assert fixed == {"k\ufffd": ["v\ufffd", {"deep": "\ufffd"}], "n": 1, "t": ["x\ufffd"]}


class FlatEmbedder:
    async def embed(self, texts: list[str], *, timeout_s: float) -> list[list[float]]:
        return [[1.0] + [0.0] * 383 for _ in texts]


async def test_memory_items_are_made_storable_on_their_one_way_into_the_store() -> None:
    store = InMemoryMemoryStore()
    gateway = MemoryGateway(store, FlatEmbedder())
    item = NewMemory(bank="qa-engineering", kind=MemoryKind.FACT, text="fact \x00", metadata={"a\x00": "b"})
    await gateway.retain([item])
    kept = await store.latest("qa-engineering", MemoryKind.FACT)
    assert kept is not None and kept.text == "fact \ufffd" and kept.metadata == {"a\ufffd": "b"}


async def test_a_transcript_quoting_raw_model_output_is_compacted_storably() -> None:
    store = InMemoryMemoryStore()
    note = await compact(MemoryGateway(store, FlatEmbedder()), "qa-engineering", "r", ["echo \x00 \ud800 raw"])
    kept = await store.latest("qa-engineering", MemoryKind.TRANSCRIPT)
    assert kept is not None and kept.text == "echo \ufffd \ufffd raw" and unstorable(note) is None


class Answers:
    def __init__(self, text: str) -> None:
        self.text = text

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        return ChatResponse(text=self.text, alias=request.alias, model="m")


OUTCOME = StageOutcome(
    team="qa-engineering",
    run_id="r",
    goal="test it",
    reasoning="Tests cover the API.",
    verified_facts=["pytest runs"],
    assumptions=["CI exists"],
    artifacts=[],
)


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800"])
async def test_an_extraction_postgres_cannot_store_falls_back_to_the_results_fields(bad: str) -> None:
    answer = '{"facts": ["f' + bad + '"], "decisions": [], "mental_model": "m"}'
    extraction = await ModelExtractor(Answers(answer), timeout_s=5).extract(OUTCOME, None)
    assert extraction.facts == ["pytest runs"]  # the structured fallback, not the model's text


class ListLedger:
    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    async def record(self, usage: UsageRecord) -> None:
        self.rows.append(usage)

    async def spent(self, run_id: str, team: str | None = None) -> Spend:
        return Spend()


class Failing:
    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        raise RuntimeError("provider answered 500: \x00\ud800 garbage")


async def test_the_ledger_records_a_providers_error_text_storably() -> None:
    ledger = ListLedger()
    request = ChatRequest(alias="factory/fast", messages=[Message(role="user", content="hi")], run_id="r")
    with pytest.raises(RuntimeError):
        await RecordingModel(Failing(), ledger).complete(request, timeout_s=5)
    [row] = ledger.rows
    assert row.error is not None and unstorable(row.error) is None and "provider answered 500" in row.error


def test_a_providers_model_name_is_made_storable() -> None:
    response: Any = ChatResponse(text="\x00 kept for validation", alias="a", model="gpt\x00\ud800")
    assert response.model == "gpt\ufffd\ufffd" and response.text.startswith("\x00")
