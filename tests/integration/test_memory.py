"""Memory banks on real PostgreSQL+pgvector (and the in-memory twin), with the real embedding model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.migrations import migrate
from memory.bank_memory import InMemoryMemoryStore
from memory.bank_pg import WRITER_MIN_ROWS, PgVectorMemoryStore
from memory.base import ALSO_RUNS_KEPT, DIMENSIONS, SHARED_BANK, MemoryKind, MemoryStore, NewMemory
from memory.gateway import MemoryGateway, approx_tokens
from memory.packing import PackedContext, compact, over_threshold, pack
from memory.qa import ProjectQA
from memory.retention import StageOutcome, StructuredExtractor, stage_memories
from routing.base import ChatRequest, ChatResponse
from routing.embeddings import EmbeddedEmbedder
from teams.base import Run, RunStatus
from teams.pipeline import PipelineEngine
from teams.results import TaskResult
from teams.roster import Team
from teams.stage_memory import StageMemory
from tests.integration.pools import migrated_pool
from tests.unit.teams.test_gate import PHASE1, Harness

pytestmark = pytest.mark.integration

TEAM = "database-engineering"
DISTRACTORS = [
    "The marketing team prefers blue for the landing page buttons.",
    "Release notes are published every second Tuesday.",
    "The office coffee machine is serviced on Fridays.",
    "Frontend components use a shared design token file.",
    "On-call rotations change every week at noon.",
    "The logo must keep a clear margin of 16 pixels.",
    "Interns start in September and shadow a mentor.",
    "The SRE runbook lists who to page for outages.",
]
NEEDLE = "Short links are stored in PostgreSQL in the table links(code text primary key, target_url text)."


class LocalEmbedder:
    """The real all-MiniLM-L6-v2 model, asynchronously (as the router's local/embed serves it)."""

    def __init__(self) -> None:
        self.model = EmbeddedEmbedder()
        self.calls = 0

    async def embed(self, texts: list[str], *, timeout_s: float) -> list[list[float]]:
        self.calls += 1
        return await asyncio.to_thread(self.model.embed, texts)


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(params=["memory", "pgvector"])
async def store(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[MemoryStore]:
    if request.param == "memory":
        yield InMemoryMemoryStore()
        return
    async with migrated_pool(pg_url) as pool:
        yield PgVectorMemoryStore(pool)


def fact(text: str, bank: str = TEAM, run: str = "run-1") -> NewMemory:
    return NewMemory(bank=bank, kind=MemoryKind.FACT, text=text, run_id=run)


async def test_recall_finds_the_relevant_item_among_distractors(store: MemoryStore, embedder: LocalEmbedder) -> None:
    gateway = MemoryGateway(store, embedder)
    await gateway.retain(
        [fact(t) for t in DISTRACTORS] + [fact(NEEDLE)] + [fact(t, bank="ux-ui-design") for t in DISTRACTORS]
    )
    found = await gateway.recall(TEAM, "Which database table holds the short links?", budget_tokens=2000, limit=3)
    assert found and found[0].item.text == NEEDLE
    assert found[0].similarity > max(r.similarity for r in found[1:])
    assert all(r.item.bank in {TEAM, SHARED_BANK} for r in found)  # another team's bank is not searched


async def test_recall_stops_at_the_token_budget(store: MemoryStore, embedder: LocalEmbedder) -> None:
    gateway = MemoryGateway(store, embedder)
    await gateway.retain([fact(t) for t in [*DISTRACTORS, NEEDLE]])
    found = await gateway.recall(TEAM, "links table", budget_tokens=40, limit=8)
    assert found and sum(approx_tokens(r.item.text) for r in found) <= 40
    assert await gateway.recall(TEAM, "links table", budget_tokens=0) == []
    assert await gateway.recall(TEAM, "   ", budget_tokens=500) == []


async def test_near_duplicates_are_merged_not_stored_twice(store: MemoryStore, embedder: LocalEmbedder) -> None:
    gateway = MemoryGateway(store, embedder, dedupe_at=0.92)
    first = await gateway.retain([fact(NEEDLE)])
    again = await gateway.retain(
        [
            fact(NEEDLE.replace("Short links are", "Short links get"), run="run-2"),  # same meaning, reworded
            fact(NEEDLE, run="run-3"),
            fact("Click counts are aggregated hourly into a separate table.", run="run-3"),
        ]
    )
    assert [r.merged for r in again] == [True, True, False]
    assert again[0].item_id == again[1].item_id == first[0].item_id
    assert again[0].similarity is not None and again[0].similarity >= 0.92
    assert await store.count(TEAM) == 2
    [(item, _)] = await store.search([TEAM], (await gateway.embed([NEEDLE]))[0], limit=1)
    assert item.seen == 3 and set(item.metadata["also_runs"]) == {"run-2", "run-3"}
    # the same text in another bank or of another kind is not a duplicate
    other = await gateway.retain(
        [fact(NEEDLE, bank=SHARED_BANK), NewMemory(bank=TEAM, kind=MemoryKind.DECISION, text=NEEDLE)]
    )
    assert [r.merged for r in other] == [False, False]


async def test_merges_over_several_retains_keep_every_run(store: MemoryStore) -> None:
    vector = [1.0] + [0.0] * (DIMENSIONS - 1)
    [first] = await store.retain([fact(NEEDLE, run="run-1")], [vector], dedupe_at=0.92)
    for runs in (["run-3", "run-2"], ["run-2"], ["run-4", "run-4"]):  # one retain each, merged in
        outcome = await store.retain([fact(NEEDLE, run=r) for r in runs], [vector] * len(runs), dedupe_at=0.92)
        assert all(r.merged and r.item_id == first.item_id for r in outcome)
    [(item, _)] = await store.search([TEAM], vector, limit=1)
    # each run once, at the place of its latest merge (run-2 merged again after run-3)
    assert item.seen == 6 and item.metadata["also_runs"] == ["run-3", "run-2", "run-4"]


async def test_an_item_every_run_repeats_keeps_only_its_latest_runs(store: MemoryStore) -> None:
    """``seen`` counts every merge; ``also_runs`` stays bounded (the latest ``ALSO_RUNS_KEPT``),
    however many runs repeat the item."""
    vector = [1.0] + [0.0] * (DIMENSIONS - 1)
    [first] = await store.retain([fact(NEEDLE, run="run-00")], [vector], dedupe_at=0.92)
    for batch in range(6):  # 30 more runs, five to a retain
        runs = [f"run-{batch * 5 + i + 1:02d}" for i in range(5)]
        outcome = await store.retain([fact(NEEDLE, run=r) for r in runs], [vector] * 5, dedupe_at=0.92)
        assert all(r.merged and r.item_id == first.item_id for r in outcome)
    [(item, _)] = await store.search([TEAM], vector, limit=1)
    assert item.seen == 31
    assert item.metadata["also_runs"] == [f"run-{n:02d}" for n in range(31 - ALSO_RUNS_KEPT, 31)]


async def test_duplicates_within_one_batch_are_merged(store: MemoryStore, embedder: LocalEmbedder) -> None:
    gateway = MemoryGateway(store, embedder)
    outcome = await gateway.retain([fact(NEEDLE), fact(DISTRACTORS[0]), fact(NEEDLE)])
    assert [r.merged for r in outcome] == [False, False, True] and outcome[2].item_id == outcome[0].item_id
    assert await store.count(TEAM) == 2


async def test_mental_models_never_merge_the_newest_is_current(store: MemoryStore) -> None:
    vector = [1.0] + [0.0] * (DIMENSIONS - 1)
    models = [NewMemory(bank=TEAM, kind=MemoryKind.MENTAL_MODEL, text=t, run_id="run-1") for t in ("A", "B", "A")]
    first = await store.retain(models[:2], [vector] * 2, dedupe_at=0.92)  # identical vectors, one batch
    again = await store.retain(models[2:], [vector], dedupe_at=0.92)  # and against the stored ones
    assert not any(r.merged for r in [*first, *again])
    latest = await store.latest(TEAM, MemoryKind.MENTAL_MODEL)
    assert latest is not None and latest.text == "A" and latest.id == again[0].item_id


class CountingEmbedder:
    """Unit vectors from a text's length; remembers every text it was asked to embed."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def embed(self, texts: list[str], *, timeout_s: float) -> list[list[float]]:
        self.texts += texts
        return [[1.0, float(len(t))] + [0.0] * (DIMENSIONS - 2) for t in texts]


async def test_mental_models_are_stored_without_a_vector_and_never_searched(store: MemoryStore) -> None:
    embedder = CountingEmbedder()
    gateway = MemoryGateway(store, embedder)
    model = NewMemory(bank=TEAM, kind=MemoryKind.MENTAL_MODEL, text="What the team knows", run_id="run-1")
    outcome = await gateway.retain([model, fact(NEEDLE)])
    assert embedder.texts == [NEEDLE] and not any(r.merged for r in outcome)  # the model is not embedded
    # found by its bank, never by a search (of any kind list, in or out of the run)
    assert (await gateway.mental_model(TEAM)) == "What the team knows"
    vector = [1.0, float(len(model.text))] + [0.0] * (DIMENSIONS - 2)
    for run_id in (None, "run-1"):
        found = await store.search([TEAM], vector, limit=10, run_id=run_id)
        assert [item.text for item, _ in found] == [NEEDLE]
    assert await gateway.recall(TEAM, "team knows", budget_tokens=500, kinds=[MemoryKind.MENTAL_MODEL]) == []
    # a vector given for a mental model is not kept; a searchable item without one is refused
    await store.retain([model], [vector], dedupe_at=0.92)
    assert [item.text for item, _ in await store.search([TEAM], vector, limit=10)] == [NEEDLE]
    with pytest.raises(ValueError, match="fact item needs its vector"):
        await store.retain([fact("no vector")], [None], dedupe_at=None)
    with pytest.raises(ValueError, match="1 items but 2 vectors"):
        await store.retain([fact("two vectors")], [vector, vector], dedupe_at=None)


def random_batch(n: int, seed: int = 11) -> tuple[list[NewMemory], list[list[float]]]:
    """``n`` facts with random unit vectors, spread over two banks."""
    rows = np.random.default_rng(seed).standard_normal((n, DIMENSIONS))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    items = [fact(f"bulk fact number {i}", bank=(TEAM, SHARED_BANK)[i % 2], run=f"run-{i // 50}") for i in range(n)]
    return items, rows.tolist()


async def test_a_large_batch_is_stored_whole_and_in_order(store: MemoryStore) -> None:
    items, vectors = random_batch(450)  # over several writers on pgvector
    outcome = await store.retain(items, vectors, dedupe_at=None)
    assert not any(r.merged for r in outcome) and len({r.item_id for r in outcome}) == 450
    assert await store.count() == 450 and await store.count(SHARED_BANK) == 225
    for i in (0, 1, 224, 225, 226, 449):  # each outcome's id is its own item's
        [(found, similarity)] = await store.search([items[i].bank], vectors[i], limit=1)
        assert (found.id, found.text, found.run_id) == (outcome[i].item_id, items[i].text, items[i].run_id)
        assert similarity > 0.999  # half floats in the index: ~1e-3 at worst


@pytest.fixture
async def two_writers(pg_url: str) -> AsyncIterator[tuple[PgVectorMemoryStore, AsyncConnectionPool]]:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate(conn)
    pool = AsyncConnectionPool(pg_url, min_size=2, max_size=2, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True)
    try:
        yield PgVectorMemoryStore(pool, writers=2), pool
    finally:
        await pool.close()


async def transactions(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(DISTINCT xmin::text) FROM memory_items")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_a_large_batch_goes_over_two_writers_all_or_nothing(
    two_writers: tuple[PgVectorMemoryStore, AsyncConnectionPool],
) -> None:
    store, pool = two_writers
    items, vectors = random_batch(300)
    await store.retain(items, vectors, dedupe_at=None)
    assert await store.count() == 300 and await transactions(pool) == 2  # two slices, one per writer
    # the last slice fails in the database (jsonb refuses a NUL): the first one is rolled back with it
    items, vectors = random_batch(300, seed=12)
    items[-1] = items[-1].model_copy(update={"metadata": {"note": "a NUL \x00 here"}})
    with pytest.raises(psycopg.errors.UntranslatableCharacter):
        await store.retain(items, vectors, dedupe_at=None)
    assert await store.count() == 300
    await store.retain(items[:-1], vectors[:-1], dedupe_at=None)  # both connections are fine afterwards
    assert await store.count() == 599 and await transactions(pool) == 4


async def test_a_small_batch_or_a_busy_pool_uses_one_writer(
    two_writers: tuple[PgVectorMemoryStore, AsyncConnectionPool],
) -> None:
    store, pool = two_writers
    items, vectors = random_batch(2 * WRITER_MIN_ROWS - 1)  # under two writers' worth of rows
    await store.retain(items, vectors, dedupe_at=None)
    assert await transactions(pool) == 1
    items, vectors = random_batch(3 * WRITER_MIN_ROWS, seed=13)
    async with pool.connection():  # the pool's other connection is taken: no waiting for it
        await store.retain(items, vectors, dedupe_at=None)
    assert await store.count() == 5 * WRITER_MIN_ROWS - 1 and await transactions(pool) == 2


async def test_packing_keeps_the_mental_model_and_stays_under_budget(
    store: MemoryStore, embedder: LocalEmbedder
) -> None:
    gateway = MemoryGateway(store, embedder)
    outcome = StageOutcome(
        team=TEAM,
        run_id="run-1",
        goal="Design the schema",
        reasoning="Links live in one table keyed by code.\nMore detail.",
        verified_facts=[NEEDLE],
        assumptions=["Click counts may lag by an hour."],
        artifacts=[
            ("schema.sql", "CREATE TABLE links (code text PRIMARY KEY, target_url text);\n\n" + "-- filler\n" * 400)
        ],
    )
    extraction = await StructuredExtractor().extract(outcome, None)
    await gateway.retain(stage_memories(outcome, extraction))
    await gateway.set_mental_model(TEAM, extraction.mental_model, run_id="run-1")
    packed = await pack(gateway, TEAM, "Where are short links stored?", budget_tokens=300, run_id="run-1")
    assert packed.tokens <= 300
    assert packed.mental_model is not None and "Links live in one table" in packed.text
    assert packed.recalled and any(NEEDLE == r.item.text for r in packed.recalled)
    assert (await pack(gateway, TEAM, "anything", budget_tokens=0)).text == ""


async def test_compaction_triggers_at_the_threshold_and_keeps_the_batch(
    store: MemoryStore, embedder: LocalEmbedder
) -> None:
    gateway = MemoryGateway(store, embedder)
    batch = ["recall results: links table uses code as key", "write_artifact schema.sql written", "x" * 3000]
    assert not over_threshold(["a" * 3196], window_tokens=1000, count=approx_tokens)  # 799 tokens: under 80%
    assert over_threshold(["a" * 3204], window_tokens=1000, count=approx_tokens)  # 801 tokens: over
    assert over_threshold(batch, window_tokens=800, count=approx_tokens)
    note = await compact(gateway, TEAM, "run-1", batch)
    assert "links table uses code as key" in note and len(note) <= 1500
    assert await store.count(TEAM) >= 3  # the transcript is retained, not lost
    model = await gateway.mental_model(TEAM)
    assert model is not None and "links table uses code as key" in model


class Answering:
    """A factory/cheap stand-in: answers with a fixed JSON text and keeps the prompts."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.prompts: list[str] = []

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        self.prompts.append(request.messages[-1].content)
        return ChatResponse(text=self.text, alias=request.alias, model="answering")


async def test_project_qa_answers_from_memory_with_citations(store: MemoryStore, embedder: LocalEmbedder) -> None:
    gateway = MemoryGateway(store, embedder)
    await gateway.retain([fact(t) for t in DISTRACTORS] + [fact(NEEDLE, run="run-7")])
    model = Answering('{"answer": "In PostgreSQL, table links.", "cited": [1]}')
    qa = ProjectQA(gateway, model, [TEAM, "ux-ui-design"], timeout_s=5)
    answer = await qa.ask("Where are the short links stored?")
    assert answer.text == "In PostgreSQL, table links." and answer.answered_by == "answering"
    assert [c.excerpt for c in answer.citations] == [NEEDLE] and answer.citations[0].run_id == "run-7"
    assert "[1]" in model.prompts[0] and NEEDLE in model.prompts[0]
    scoped = await qa.ask("Where are the short links stored?", run_id="run-other")
    assert scoped.citations == [] and "nothing" in scoped.text


@pytest.mark.parametrize("garbage", ["not json", '{"answer": "Made up.", "cited": [42]}', '{"answer": ""}'])
async def test_project_qa_falls_back_to_the_evidence_on_garbage(
    store: MemoryStore, embedder: LocalEmbedder, garbage: str
) -> None:
    gateway = MemoryGateway(store, embedder)
    await gateway.retain([fact(NEEDLE)])
    answer = await ProjectQA(gateway, Answering(garbage), [TEAM], timeout_s=5).ask("Where are short links stored?")
    assert answer.answered_by == "memory" and answer.citations and answer.citations[0].excerpt == NEEDLE
    with pytest.raises(ValueError, match="empty"):
        await ProjectQA(gateway, Answering(garbage), [TEAM], timeout_s=5).ask("  ")


class FailsOnceFor(StageMemory):
    """Stage memory whose retention fails once for one team, as if the process died right after
    that stage's commit (or memory was down at that moment)."""

    def __init__(self, team: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "failing", team)

    async def retain(self, member: Team, run: Run, result: TaskResult, packed: PackedContext | None = None) -> int:
        if member.slug == self.failing:
            object.__setattr__(self, "failing", None)
            raise RuntimeError("connection to the memory store lost")  # not a FactoryError: still not fatal
        return await super().retain(member, run, result, packed)


async def test_a_stage_committed_without_its_memory_gets_it_when_the_run_is_driven_again(
    store: MemoryStore, embedder: LocalEmbedder, tmp_path: Path
) -> None:
    h = Harness(tmp_path, {})
    memory = FailsOnceFor(
        "backend-engineering", gateway=MemoryGateway(store, embedder), extractor=StructuredExtractor(),
        count=approx_tokens, budget_tokens=600, window_tokens=8192,
    )  # fmt: skip
    h.engine = PipelineEngine(replace(h.engine.deps, memory=memory))
    out = await h.run()
    assert out.run.status is RunStatus.COMPLETE and "memory.retain_failed" in h.events
    assert await memory.unretained(out.run, PHASE1) == ["backend-engineering"]
    before = await store.count()
    await h.engine.drive(out.run.id)  # `factory resume`, even of a complete run, mends it
    assert await memory.unretained(out.run, PHASE1) == []
    assert await store.count() > before
    again = await store.count()
    await h.engine.drive(out.run.id)  # and only once
    assert await store.count() == again


async def test_recall_gives_a_text_kept_in_two_banks_once(store: MemoryStore, embedder: LocalEmbedder) -> None:
    gateway = MemoryGateway(store, embedder)
    kept = await gateway.retain([fact(NEEDLE), fact(NEEDLE, bank=SHARED_BANK)])
    assert kept[0].item_id != kept[1].item_id  # stored in both banks
    found = await gateway.recall(TEAM, "Where are short links stored?", budget_tokens=2000)
    assert [r.item.text for r in found] == [NEEDLE]
