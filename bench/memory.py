# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Memory layer: embedding throughput, ingest rate, top-8 recall latency and quality over 100,000
items on pgvector, and prompt tokens per stage with packing vs every earlier artifact in full.
Prints JSON, each figure next to its goal.

    python -m bench.memory [--items 100000] [--queries 200] [--writers 2] [--no-embedding] [--no-pipeline]

- embedding: the int8 all-MiniLM-L6-v2 (``EmbeddedEmbedder``, 2 threads) on generated sentences of
  10-40 words in one call (as the gateway embeds a stage's items), directly and through
  ``LiteLLMRouter.embed`` (local/embed); and one query's latency (as recall embeds it);
- ingest: ``PgVectorMemoryStore.retain`` with precomputed vectors into the real table and its HNSW
  index, without dedupe (all items) and with dedupe (a smaller sample, half of it near-copies); the
  store as the factory builds it (a batch of 500 goes over two connections), ``--writers 1`` for one;
- recall: ``store.search`` top-8 over the items spread over 17 team banks + the shared world, each
  query on ``[team, SHARED_BANK]``, against exact search (numpy brute force over the same vectors,
  filtered by bank; checked against PostgreSQL with the index disabled). The vectors are synthetic
  (unit vectors around 200 cluster centres): embedding 100,000 texts would take longer than the rest;
- tokens: the 17-team pipeline on a scripted model with memory wired as ``open_factory`` does; per
  stage, the prompt actually sent vs the same prompt with every earlier artifact of the run in full.
  The default scripted artifacts are a line each, so it is also run with artifacts of a few KB.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and the file's name would shadow the
# ``memory`` package (the project's packages are found through its editable install).
_HERE = str(Path(__file__).resolve().parent)
if _HERE in sys.path:
    sys.path.remove(_HERE)

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from bench.stats import pct
from factory import services
from factory.migrations import migrate
from factory.settings import Settings
from factory.wiring import open_factory
from memory.bank_pg import PgVectorMemoryStore, vector_text
from memory.base import DIMENSIONS, SHARED_BANK, MemoryKind, NewMemory
from routing import aliases
from routing.base import ChatRequest, ChatResponse
from routing.embedded import Completion
from routing.embeddings import EmbeddedEmbedder
from routing.router import LiteLLMRouter
from routing.scripted import ScriptedModel, complete_answer
from teams.base import Objective
from teams.roster import team
from teams.runner import PriorArtifact, build_messages
from teams.slugs import ALL_TEAMS

REQ = "Build a URL shortener service with an HTTP API: create short links, redirect, and count clicks."
THREADS = 2

SUBJECTS = [
    "The API gateway", "Each short link", "The redirect handler", "The click counter", "The PostgreSQL schema",
    "The background worker", "Every request", "The admin dashboard", "The rate limiter", "The CI pipeline",
    "The cache layer", "The audit log", "The frontend form", "The migration script", "The on-call engineer",
    "The load test", "The threat model", "The analytics job", "The retention policy", "The release checklist",
]  # fmt: skip
VERBS = [
    "stores", "validates", "rejects", "records", "retries", "exposes", "encrypts", "aggregates", "invalidates",
    "publishes", "rotates", "monitors", "documents", "deduplicates", "paginates", "throttles", "backs up",
]  # fmt: skip
OBJECTS = [
    "the target URL", "click events per hour", "expired codes", "malformed payloads", "the OpenAPI contract",
    "the health endpoint", "custom aliases", "personal data of visitors", "the service account keys",
    "slow database queries", "the p95 redirect latency", "duplicate submissions", "the error budget",
]  # fmt: skip
TAILS = [
    "before the response is sent to the client", "within 50 milliseconds at the 95th percentile",
    "so that operators can replay failures after an incident", "unless the feature flag is switched off",
    "using a partial index on the code column", "and writes a structured log line with the request id",
    "for at most thirty days before they are purged", "behind the load balancer in both regions",
    "as agreed with the security team in the last review", "when the upstream service returns a 5xx error",
    "with an exponential backoff capped at one minute", "and the acceptance tests cover every branch",
]  # fmt: skip


def sentence(rng: random.Random, words: int) -> str:
    """A technical sentence of exactly ``words`` words."""
    parts = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}".split()
    while len(parts) < words:
        parts += rng.choice(TAILS).split()
    return " ".join(parts[:words]) + "."


def sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, rng.randint(10, 40)) for _ in range(n)]


# --- 1. embeddings -----------------------------------------------------------------------------


async def embedding(n: int, batch: int) -> dict[str, Any]:
    """Throughput on ``n`` sentences in one call (as the gateway embeds a stage's items), and the
    latency of one query (as recall embeds it), directly and through the router."""
    texts = sentences(n)
    embedder = EmbeddedEmbedder(batch_size=batch, threads=THREADS)
    embedder.embed(texts[:batch])  # load the model
    started, cpu = time.perf_counter(), time.process_time()
    embedder.embed(texts)
    direct_s, direct_cpu = time.perf_counter() - started, time.process_time() - cpu
    router = LiteLLMRouter(aliases.default_routing(), embedder=EmbeddedEmbedder(batch_size=batch, threads=THREADS))
    await router.embed(texts[:batch], timeout_s=120)  # import LiteLLM, load the model
    started = time.perf_counter()
    await router.embed(texts, timeout_s=120)
    routed_s = time.perf_counter() - started
    one_direct, one_routed = [], []
    for text in texts[:30]:
        started = time.perf_counter()
        embedder.embed([text])
        one_direct.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await router.embed([text], timeout_s=120)
        one_routed.append((time.perf_counter() - started) * 1000)
    return {
        "sentences": n,
        "words_mean": round(statistics.mean(len(t.split()) for t in texts), 1),
        "batch": batch,
        "threads": THREADS,
        "embedded_sentences_per_s": round(n / direct_s, 1),
        "embedded_cpu_s_per_wall_s": round(direct_cpu / direct_s, 2),
        "router_sentences_per_s": round(n / routed_s, 1),
        "one_query_p50_ms": {
            "embedded": round(statistics.median(one_direct), 1),
            "router": round(statistics.median(one_routed), 1),
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
        "goal_sentences_per_s": 200,
    }


# --- 2, 3. ingest and recall on pgvector ----------------------------------------------------------

TEAM_BANKS = list(ALL_TEAMS)  # 17 team banks, plus the shared world
KINDS = [MemoryKind.FACT, MemoryKind.DECISION, MemoryKind.ARTIFACT]


def unit(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    rows: np.ndarray[Any, Any] = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    return rows


class Corpus:
    """Synthetic vectors around cluster centres; half the items in the shared world (retention
    writes facts and decisions to both banks and artifact chunks to the shared world only)."""

    def __init__(self, n: int, *, clusters: int = 200, spread: float = 1.0, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = unit(self.rng.standard_normal((clusters, DIMENSIONS)))
        self.spread = spread
        self.vectors = self.around(n)
        shared = self.rng.random(n) < 0.5
        self.bank_index = np.where(shared, len(TEAM_BANKS), self.rng.integers(0, len(TEAM_BANKS), n))
        names = [*TEAM_BANKS, SHARED_BANK]
        rng = random.Random(3)
        self.items = [
            NewMemory(
                bank=names[b],
                kind=KINDS[i % 3],
                text=sentence(rng, rng.randint(10, 40)),
                run_id=f"bench-{i // 100}",
                metadata={"team": TEAM_BANKS[b % len(TEAM_BANKS)]},
            )
            for i, b in enumerate(self.bank_index.tolist())
        ]
        self.ids = np.zeros(n, dtype=np.int64)

    def around(self, n: int) -> np.ndarray[Any, Any]:
        """``n`` unit vectors, each near a random centre (cosine ~0.7 to it with spread 1)."""
        centre = self.centres[self.rng.integers(0, len(self.centres), n)]
        noise = self.rng.standard_normal((n, DIMENSIONS)).astype(np.float32) / np.sqrt(DIMENSIONS)
        return unit(centre + self.spread * noise)


async def ingest(store: PgVectorMemoryStore, corpus: Corpus, batch: int) -> dict[str, Any]:
    n = len(corpus.items)
    seconds: list[float] = []
    for i in range(0, n, batch):
        vectors = corpus.vectors[i : i + batch].tolist()  # as the embedder hands them over
        started = time.perf_counter()
        done = await store.retain(corpus.items[i : i + batch], vectors, dedupe_at=None)
        seconds.append(time.perf_counter() - started)
        corpus.ids[i : i + batch] = [r.item_id for r in done]
    tenth = max(1, len(seconds) // 10)
    return {
        "items": n,
        "batch": batch,
        "seconds": round(sum(seconds), 1),
        "items_per_s": round(n / sum(seconds), 1),
        "items_per_s_first_tenth": round(tenth * batch / sum(seconds[:tenth]), 1),
        "items_per_s_last_tenth": round(tenth * batch / sum(seconds[-tenth:]), 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def ingest_dedupe(store: PgVectorMemoryStore, corpus: Corpus, n: int, batch: int) -> dict[str, Any]:
    """Half near-copies of stored items (same bank and kind, cosine ~0.99), half new items."""
    rng = random.Random(5)
    picks = [rng.randrange(len(corpus.items)) for _ in range(n // 2)]
    copies = unit(corpus.vectors[picks] + 0.1 * corpus.around(len(picks)))
    fresh = corpus.around(n - len(picks))
    items = [corpus.items[p] for p in picks] + [
        NewMemory(bank=SHARED_BANK, kind=MemoryKind.FACT, text=sentence(rng, 20)) for _ in range(len(fresh))
    ]
    vectors = np.concatenate([copies, fresh]).tolist()
    order = list(range(n))
    rng.shuffle(order)
    merged = 0
    started = time.perf_counter()
    for i in range(0, n, batch):
        chunk = order[i : i + batch]
        done = await store.retain([items[j] for j in chunk], [vectors[j] for j in chunk], dedupe_at=0.92)
        merged += sum(r.merged for r in done)
    elapsed = time.perf_counter() - started
    return {
        "items": n,
        "batch": batch,
        "near_copies": len(picks),
        "merged": merged,
        "seconds": round(elapsed, 1),
        "items_per_s": round(n / elapsed, 1),
    }


def exact_top(corpus: Corpus, query: np.ndarray[Any, Any], team_index: int, k: int) -> list[int]:
    mask = (corpus.bank_index == team_index) | (corpus.bank_index == len(TEAM_BANKS))
    where = np.nonzero(mask)[0]
    sims = corpus.vectors[where] @ query
    best = where[np.argsort(-sims)[:k]]
    return [int(corpus.ids[i]) for i in best]


async def exact_in_postgres(pool: AsyncConnectionPool, banks: list[str], query: list[float], k: int) -> list[int]:
    """The same query with the HNSW index disabled: a sequential scan, exact."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_indexscan = off")
        cursor = await conn.execute(
            "SELECT id FROM memory_items WHERE bank = ANY(%s) ORDER BY embedding <=> %s::vector LIMIT %s",
            (banks, vector_text(query), k),
        )
        return [row[0] for row in await cursor.fetchall()]


async def recall(
    store: PgVectorMemoryStore, pool: AsyncConnectionPool, corpus: Corpus, queries: int, k: int = 8
) -> dict[str, Any]:
    vectors = corpus.around(queries + 20)
    latencies: list[float] = []
    hits: list[float] = []
    checked = agreed = 0
    for q in range(queries + 20):
        team_index = q % len(TEAM_BANKS)
        banks = [TEAM_BANKS[team_index], SHARED_BANK]
        query = vectors[q].tolist()
        started = time.perf_counter()
        found = await store.search(banks, query, limit=k)
        elapsed = (time.perf_counter() - started) * 1000
        if q < 20:  # warm-up
            continue
        latencies.append(elapsed)
        exact = exact_top(corpus, vectors[q], team_index, k)
        hits.append(len({item.id for item, _ in found} & set(exact)) / k)
        if q < 40:  # the numpy ground truth is PostgreSQL's own exact answer
            checked += 1
            agreed += set(await exact_in_postgres(pool, banks, query, k)) == set(exact)
    return {
        "items": len(corpus.items),
        "banks": len(TEAM_BANKS) + 1,
        "queries": queries,
        "k": k,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(pct(latencies, 0.95), 2),
        "recall_at_8": round(statistics.mean(hits), 4),
        "recall_at_8_min": round(min(hits), 3),
        "queries_below_half": sum(h < 0.5 for h in hits),
        "exact_numpy_equals_postgres_seqscan": f"{agreed}/{checked}",
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def run_scoped(store: PgVectorMemoryStore, corpus: Corpus, queries: int = 50) -> dict[str, Any]:
    """As a stage recalls: one run's items only (100 of them among all), all kinds, limit 32."""
    vectors = corpus.around(queries)
    runs = np.arange(len(corpus.items)) // 100
    latencies, found_counts, hits = [], [], []
    for q in range(queries):
        run, team_index = (q * 37) % (len(corpus.items) // 100), q % len(TEAM_BANKS)
        started = time.perf_counter()
        found = await store.search(
            [TEAM_BANKS[team_index], SHARED_BANK], vectors[q].tolist(), limit=32, kinds=KINDS, run_id=f"bench-{run}"
        )
        latencies.append((time.perf_counter() - started) * 1000)
        mask = (runs == run) & ((corpus.bank_index == team_index) | (corpus.bank_index == len(TEAM_BANKS)))
        where = np.nonzero(mask)[0]
        exact = {int(corpus.ids[i]) for i in where[np.argsort(-(corpus.vectors[where] @ vectors[q]))[:32]]}
        found_counts.append(len(found))
        hits.append(len({item.id for item, _ in found} & exact) / max(1, len(exact)))
    return {
        "queries": queries,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(pct(latencies, 0.95), 2),
        "found_mean": round(statistics.mean(found_counts), 1),
        "recall_vs_exact": round(statistics.mean(hits), 4),
        "note": "each run has 100 items over all banks, ~53 of them in the two banks searched",
    }


async def store_bench(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
        row = await (await conn.execute("SHOW shared_buffers")).fetchone()
        index = await (
            await conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'memory_items_embedding'")
        ).fetchone()
    pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True, timeout=30)
    try:
        store = PgVectorMemoryStore(pool) if args.writers is None else PgVectorMemoryStore(pool, writers=args.writers)
        corpus = Corpus(args.items)
        report: dict[str, Any] = {"ingest": await ingest(store, corpus, args.batch)}
        report["ingest"]["writers"] = store.writers
        report["ingest"]["goal_items_per_s"] = 1000
        report["recall"] = await recall(store, pool, corpus, args.queries)
        report["recall"]["goal_p50_ms"] = 10.0
        report["recall"]["goal_recall_at_8"] = 0.95
        report["recall_run_scoped"] = await run_scoped(store, corpus)
        report["ingest_dedupe"] = await ingest_dedupe(store, corpus, args.dedupe_items, 50)
        report["ingest_dedupe"]["goal_items_per_s"] = 1000
        report["shared_buffers"] = row[0] if row else None
        report["index"] = index[0] if index else None
        report["vectors"] = "synthetic: unit vectors around 200 cluster centres (cosine ~0.7 to the centre)"
        return report
    finally:
        await pool.close()


# --- 4. prompt tokens per stage -------------------------------------------------------------------


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng, rng.randint(10, 40)) for _ in range(rng.randint(3, 6)))


def document(seed: str, chars: int) -> str:
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    text = f"# {seed}\n"
    while len(text) < chars:
        text += "\n" + paragraph(rng) + "\n"
    return text


class RealisticModel(ScriptedModel):
    """The scripted model, with artifacts of ``chars`` characters and a few facts and assumptions."""

    def __init__(self, chars: int) -> None:
        super().__init__()
        self.chars = chars

    def answer(self, request: ChatRequest) -> Completion:
        answer = complete_answer(request)
        rng = random.Random(f"{request.team}:{request.purpose}")
        answer["reasoning"] = paragraph(rng)
        answer["verified_facts"] = [sentence(rng, rng.randint(10, 25)) for _ in range(3)]
        answer["assumptions_made"] = [sentence(rng, rng.randint(10, 25)) for _ in range(2)]
        for artifact in answer["artifacts"]:
            artifact["content"] = document(f"{artifact['name']} by {request.team}", self.chars)
        text = json.dumps(answer)
        tokens_in = sum(len(m.content) for m in request.messages) // 4
        return Completion(text=text, tokens_in=tokens_in, tokens_out=len(text) // 4)


class Capturing:
    """Keeps the first objective prompt of each team."""

    def __init__(self, inner: ScriptedModel) -> None:
        self.inner = inner
        self.prompts: dict[str, ChatRequest] = {}

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        if request.purpose == "objective" and request.team:
            self.prompts.setdefault(request.team, request)
        return await self.inner.complete(request, timeout_s=timeout_s)


def tokens(texts: Sequence[str]) -> int:
    return sum(len(t) for t in texts) // 4  # as the scripted model counts (tokens_in in the ledger)


def stage_figures(
    sent: ChatRequest, objective: Objective, prior: list[PriorArtifact], real: int, budget_chars: int
) -> dict[str, Any]:
    """The prompt sent (``real`` tokens, from the ledger) vs the same prompt with every earlier
    artifact in full, and vs the no-memory prompt (the artifacts the team reads, cut to the budget)."""
    member = team(objective.team)
    objective = objective.model_copy(
        update={"goal": member.goal, "acceptance_criteria": list(member.acceptance_criteria)}
    )
    system = sent.messages[0].content  # the same tools are offered either way

    def prompt(context: Sequence[PriorArtifact], budget: int) -> int:
        user = build_messages(member, objective, REQ, context, feedback=(), budget_chars=budget)[1].content
        return tokens([system, user])

    full = prompt(prior, 10**9)
    return {
        "earlier_artifacts": len(prior),
        "earlier_artifact_chars": sum(len(p.artifact.content) for p in prior),
        "packed_prompt_tokens": real,
        "all_in_full_tokens": full,
        "ratio": round(real / full, 3),
        "no_memory_reads_cut_tokens": prompt([p for p in prior if p.team in set(member.reads)], budget_chars),
    }


async def pipeline_tokens(settings: Settings, model: ScriptedModel) -> dict[str, Any]:
    capturing = Capturing(model)
    async with open_factory(settings, model=capturing) as factory:
        outcome = await factory.engine.start(REQ, "full")
        async with factory.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT team, tokens_in FROM usage_ledger WHERE run_id = %s AND purpose = 'objective' ORDER BY id",
                (outcome.run.id,),
            )
            ledger: dict[str, int] = {}
            for name, tokens_in in await cursor.fetchall():
                ledger.setdefault(name, int(tokens_in))
    assert outcome.run.status.value == "complete", outcome.run.status
    stages: dict[str, dict[str, Any]] = {}
    prior: list[PriorArtifact] = []
    for stage in outcome.stages:
        sent = capturing.prompts[stage.team]
        objective = Objective(
            id=f"{outcome.run.id}:{stage.index}",
            run_id=outcome.run.id,
            team=stage.team,
            goal="",
            acceptance_criteria=[],
        )
        stages[stage.team] = stage_figures(sent, objective, prior, ledger[stage.team], settings.context_budget_chars)
        assert stage.result is not None
        prior.extend(PriorArtifact(stage.team, a) for a in stage.result.artifacts)
    ratios = [s["ratio"] for s in stages.values() if s["earlier_artifacts"]]
    return {
        "stages": len(stages),
        "artifact_chars_mean": round(statistics.mean(len(p.artifact.content) for p in prior)),
        "median_ratio": round(statistics.median(ratios), 3),
        "median_over": "stages with at least one earlier artifact",
        "total_ratio": round(
            sum(s["packed_prompt_tokens"] for s in stages.values())
            / sum(s["all_in_full_tokens"] for s in stages.values()),
            3,
        ),
        "per_stage": stages,
        "goal_median_ratio_at_most": 0.5,
    }


async def tokens_bench(admin_url: str, data_dir: Path, artifact_chars: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, model in (("scripted", ScriptedModel()), ("realistic", RealisticModel(artifact_chars))):
        database = f"bench_{name}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        settings = Settings(
            data_dir=data_dir,
            database_url=SecretStr(urlunsplit(urlsplit(admin_url)._replace(path=f"/{database}"))),
            redis_url=None,
            scripted_model=None,
            confidence_floor=0.0,
            verify=False,
            memory_extraction="structured",
        )
        report[name] = await pipeline_tokens(settings, model)
    report["settings"] = {
        "memory_budget_tokens": settings.memory_budget_tokens,
        "context_budget_chars": settings.context_budget_chars,
        "memory_extraction": "structured (the result's own fields: the figures compare packing, not extractors)",
        "tokens": "characters / 4, as the scripted model reports tokens_in to the usage ledger",
    }
    return report


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500, help="items per retain call when ingesting")
    parser.add_argument("--writers", type=int, help="connections a retain inserts over (default: the store's)")
    parser.add_argument("--dedupe-items", type=int, default=2000)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--artifact-chars", type=int, default=3000, help="artifact size in the realistic run")
    parser.add_argument("--no-embedding", action="store_true")
    parser.add_argument("--no-store", action="store_true")
    parser.add_argument("--no-pipeline", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    started = time.perf_counter()
    if not args.no_embedding:
        report["embedding"] = await embedding(args.sentences, 32)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            url = services.start_postgres(Path(tmp))
            if not args.no_store:
                report["store"] = await store_bench(url, args)
            if not args.no_pipeline:
                report["prompt_tokens"] = await tokens_bench(url, Path(tmp), args.artifact_chars)
        finally:
            services.stop(Path(tmp))
    report["bench_wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
