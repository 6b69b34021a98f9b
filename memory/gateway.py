"""The memory gateway: what teams retain and recall, through embeddings and a ``MemoryStore``.

Recall searches a team's own bank and the shared world, blends cosine similarity with recency
and stops at a token budget. Retention embeds in one batch and merges near-duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from memory.base import SEARCHABLE, SHARED_BANK, MemoryKind, MemoryStore, NewMemory, Recalled, Retained
from observability.text import storable, storable_data
from routing.base import Embedder

TokenCount = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters a token), for models without a known tokenizer."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


@dataclass(frozen=True)
class RecallPolicy:
    """How recall ranks: ``score = (1 - recency_weight) * similarity + recency_weight * freshness``,
    freshness halving every ``half_life_days``."""

    recency_weight: float = 0.15
    half_life_days: float = 14.0
    overfetch: int = 4  # nearest candidates fetched per result wanted, re-ranked with recency
    min_similarity: float = 0.15  # below this an item is noise, however fresh


class MemoryGateway:
    """Retain and recall for every team; the only way the pipeline touches memory."""

    def __init__(
        self,
        store: MemoryStore,
        embedder: Embedder,
        *,
        timeout_s: float = 60.0,
        dedupe_at: float = 0.92,
        policy: RecallPolicy | None = None,
    ) -> None:
        self.store = store
        self._embedder = embedder
        self._timeout_s = timeout_s
        self.dedupe_at = dedupe_at
        self.policy = policy or RecallPolicy()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self._embedder.embed(list(texts), timeout_s=self._timeout_s) if texts else []

    async def retain(self, items: Sequence[NewMemory], *, dedupe: bool = True) -> list[Retained]:
        """Embed and store; near-duplicates (same bank and kind) are merged, not stored twice. Only
        ``SEARCHABLE`` items are embedded (a mental model is found by its bank)."""
        if not items:
            return []
        # Items quote model output and transcripts: what PostgreSQL cannot store is replaced here,
        # the one way into the store (memory is derived; a replaced character loses nothing audited).
        items = [_storable(i) for i in items]
        # The same text in two banks is embedded once.
        unique = list(dict.fromkeys(i.text for i in items if i.kind in SEARCHABLE))
        by_text = dict(zip(unique, await self.embed(unique), strict=True))
        vectors = [by_text[i.text] if i.kind in SEARCHABLE else None for i in items]
        return await self.store.retain(items, vectors, dedupe_at=self.dedupe_at if dedupe else None)

    async def recall(
        self,
        team: str,
        query: str,
        *,
        budget_tokens: int,
        count: TokenCount = approx_tokens,
        limit: int = 8,
        kinds: Sequence[MemoryKind] | None = None,
        run_id: str | None = None,
        shared: bool = True,
        banks: Sequence[str] | None = None,
    ) -> list[Recalled]:
        """The best items for ``query`` from ``team``'s bank (and the shared world), best first,
        as many as fit in ``budget_tokens``; ``banks`` overrides which banks are searched."""
        wanted = [k for k in (kinds or MemoryKind) if k in SEARCHABLE]  # a mental model is never searched
        if not query.strip() or budget_tokens <= 0 or not wanted:
            return []
        [vector] = await self.embed([query])
        if banks is None:
            banks = [team, SHARED_BANK] if shared and team != SHARED_BANK else [team]
        found = await self.store.search(banks, vector, limit=limit * self.policy.overfetch, kinds=wanted, run_id=run_id)
        now = datetime.now(UTC)
        ranked = sorted(
            (
                Recalled(item=item, similarity=round(sim, 4), score=round(self._score(sim, item.updated_at, now), 4))
                for item, sim in found
                if sim >= self.policy.min_similarity
            ),
            key=lambda r: r.score,
            reverse=True,
        )
        chosen: list[Recalled] = []
        seen: set[str] = set()
        used = 0
        for candidate in ranked:
            if candidate.item.text in seen:
                continue  # the same text kept in the team's bank and the shared world: once is enough
            cost = count(candidate.item.text)
            if used + cost > budget_tokens:
                continue  # a smaller item further down may still fit
            chosen.append(candidate)
            seen.add(candidate.item.text)
            used += cost
            if len(chosen) == limit:
                break
        return chosen

    def _score(self, similarity: float, when: datetime, now: datetime) -> float:
        age_days = max(0.0, (now - when).total_seconds() / 86400)
        freshness: float = 0.5 ** (age_days / self.policy.half_life_days)
        weight = self.policy.recency_weight
        return (1 - weight) * similarity + weight * freshness

    async def mental_model(self, team: str) -> str | None:
        item = await self.store.latest(team, MemoryKind.MENTAL_MODEL)
        return item.text if item else None

    async def set_mental_model(self, team: str, text: str, *, run_id: str | None) -> None:
        """The team's living summary; the newest one is current."""
        await self.retain([mental_model_item(team, text, run_id=run_id)])


def _storable(item: NewMemory) -> NewMemory:
    text, metadata = storable(item.text), storable_data(item.metadata)
    if text == item.text and metadata == item.metadata:
        return item
    return item.model_copy(update={"text": text, "metadata": metadata})


def mental_model_item(team: str, text: str, *, run_id: str | None) -> NewMemory:
    """A team's mental model as an item to retain (with others in one batch, or alone)."""
    return NewMemory(bank=team, kind=MemoryKind.MENTAL_MODEL, text=text[:4000], run_id=run_id)
