"""In-memory twin of the pgvector memory store, for unit tests (exact search, same contract)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from memory.base import MERGEABLE, MemoryItem, MemoryKind, NewMemory, Retained, Vector, also_runs
from memory.dedupe import checked, dense, unit_rows, within_batch


class InMemoryMemoryStore:
    """``MemoryStore`` in a list; cosine search by brute force."""

    def __init__(self) -> None:
        self._items: list[MemoryItem] = []
        self._vectors: list[np.ndarray | None] = []

    async def retain(
        self, items: Sequence[NewMemory], vectors: Sequence[Vector], *, dedupe_at: float | None
    ) -> list[Retained]:
        vectors = checked(items, vectors)
        now = datetime.now(UTC)
        first_of = within_batch(items, vectors, dedupe_at) if dedupe_at is not None else list(range(len(items)))
        unit = dense(vectors) if items else np.zeros((0, 0), dtype=np.float32)
        outcomes: list[Retained] = []
        for i, item in enumerate(items):
            if first_of[i] != i:
                target = outcomes[first_of[i]]
                self._merge(target.item_id, item, now)
                outcomes.append(Retained(item_id=target.item_id, merged=True))
                continue
            if dedupe_at is not None and item.kind in MERGEABLE:
                near = self._nearest(item, unit[i])
                if near is not None and near[1] >= dedupe_at:
                    self._merge(near[0], item, now)
                    outcomes.append(Retained(item_id=near[0], merged=True, similarity=round(near[1], 4)))
                    continue
            stored = MemoryItem(**item.model_dump(), id=len(self._items) + 1, created_at=now, updated_at=now)
            self._items.append(stored)
            self._vectors.append(unit[i] if vectors[i] is not None else None)
            outcomes.append(Retained(item_id=stored.id, merged=False))
        return outcomes

    def _nearest(self, item: NewMemory, vector: np.ndarray) -> tuple[int, float] | None:
        best: tuple[int, float] | None = None
        for stored, other in zip(self._items, self._vectors, strict=True):
            if stored.bank == item.bank and stored.kind == item.kind and other is not None:
                similarity = float(vector @ other)
                if best is None or similarity > best[1]:
                    best = (stored.id, similarity)
        return best

    def _merge(self, item_id: int, item: NewMemory, now: datetime) -> None:
        stored = self._items[item_id - 1]
        runs = also_runs(stored.metadata.get("also_runs", []), [item.run_id] if item.run_id else [])
        self._items[item_id - 1] = stored.model_copy(
            update={"seen": stored.seen + 1, "updated_at": now, "metadata": {**stored.metadata, "also_runs": runs}}
        )

    async def search(
        self,
        banks: Sequence[str],
        vector: Sequence[float],
        *,
        limit: int,
        kinds: Sequence[MemoryKind] | None = None,
        run_id: str | None = None,
    ) -> list[tuple[MemoryItem, float]]:
        if limit <= 0 or not self._items:
            return []
        query = unit_rows([vector])[0]
        found = [
            (item, float(query @ other))
            for item, other in zip(self._items, self._vectors, strict=True)
            if other is not None
            and item.bank in banks
            and (not kinds or item.kind in kinds)
            and (run_id is None or item.run_id == run_id)
        ]
        found.sort(key=lambda pair: pair[1], reverse=True)
        return found[:limit]

    async def latest(self, bank: str, kind: MemoryKind) -> MemoryItem | None:
        matching = [i for i in self._items if i.bank == bank and i.kind == kind]
        return max(matching, key=lambda i: (i.created_at, i.id)) if matching else None

    async def count(self, bank: str | None = None) -> int:
        return sum(1 for i in self._items if bank is None or i.bank == bank)

    async def banks_with(self, run_id: str, kind: MemoryKind) -> set[str]:
        return {i.bank for i in self._items if i.run_id == run_id and i.kind == kind}
