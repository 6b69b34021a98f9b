"""Contracts of the ``memory`` package: memory banks on pgvector and the immutable audit log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

SHARED_BANK = "factory-shared-world"
DIMENSIONS = 384  # all-MiniLM-L6-v2; the vector column's width


class MemoryKind(StrEnum):
    FACT = "fact"
    DECISION = "decision"
    ARTIFACT = "artifact"
    TRANSCRIPT = "transcript"
    MENTAL_MODEL = "mental_model"


#: Kinds whose near-duplicates merge. A mental model never does: the newest one is current.
MERGEABLE: frozenset[MemoryKind] = frozenset(MemoryKind) - {MemoryKind.MENTAL_MODEL}

#: Kinds found by similarity. A mental model is found by its bank (the newest one), never by a
#: search: it is stored without a vector, which spares its embedding and its vector index entry.
SEARCHABLE: frozenset[MemoryKind] = frozenset(MemoryKind) - {MemoryKind.MENTAL_MODEL}

#: How many run ids a merged item keeps in ``metadata["also_runs"]``: the latest ones it was merged
#: from, oldest first (``seen`` counts them all). An item every run repeats would otherwise grow
#: without bound, and every merge would rewrite the whole list.
ALSO_RUNS_KEPT = 20


def also_runs(kept: Sequence[str], merged: Sequence[str]) -> list[str]:
    """``kept`` followed by the ``merged`` run ids, each once at its latest place, the last ``ALSO_RUNS_KEPT``."""
    latest = {run: at for at, run in enumerate([*kept, *merged])}
    return sorted(latest, key=latest.__getitem__)[-ALSO_RUNS_KEPT:]


#: One item's vector; ``None`` for an item of a kind that is not ``SEARCHABLE``.
Vector = Sequence[float] | None


class NewMemory(BaseModel):
    """An item to retain in a bank (its vector is computed by the gateway)."""

    model_config = ConfigDict(frozen=True)

    bank: str = Field(min_length=1, max_length=100)
    kind: MemoryKind
    text: str = Field(min_length=1, max_length=20_000)
    run_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class MemoryItem(NewMemory):
    """A retained item."""

    id: int
    created_at: datetime
    updated_at: datetime
    seen: int = 1  # how many times it was retained (near-duplicates merge into one item)


class Recalled(BaseModel):
    """An item found by recall, with its similarity to the query and its blended score."""

    item: MemoryItem
    similarity: float
    score: float


class Retained(BaseModel):
    """What happened to one ``NewMemory``: stored as a new item, or merged into a near-duplicate."""

    item_id: int
    merged: bool
    similarity: float | None = None


class MemoryStore(Protocol):
    """Banks of items with vectors; cosine search; near-duplicates merged, not stored twice."""

    async def retain(
        self, items: Sequence[NewMemory], vectors: Sequence[Vector], *, dedupe_at: float | None
    ) -> list[Retained]:
        """Store items; with ``dedupe_at``, an item of a ``MERGEABLE`` kind at least that similar to one
        of the same bank and kind (stored, or earlier in the batch) is merged into it instead.

        Every ``SEARCHABLE`` item needs its vector; others are stored without one (a vector given
        for them is not kept)."""
        ...

    async def search(
        self,
        banks: Sequence[str],
        vector: Sequence[float],
        *,
        limit: int,
        kinds: Sequence[MemoryKind] | None = None,
        run_id: str | None = None,
    ) -> list[tuple[MemoryItem, float]]:
        """The ``limit`` items nearest to ``vector`` (cosine similarity, best first); only
        ``SEARCHABLE`` items are ever found."""
        ...

    async def latest(self, bank: str, kind: MemoryKind) -> MemoryItem | None:
        """The newest item of a kind in a bank (used for the mental model)."""
        ...

    async def count(self, bank: str | None = None) -> int: ...

    async def banks_with(self, run_id: str, kind: MemoryKind) -> set[str]:
        """The banks holding an item of ``kind`` retained for ``run_id``."""
        ...


class AuditEntry(BaseModel):
    """One link of a run's audit chain."""

    run_id: str
    seq: int
    key: str
    kind: str
    payload: str  # canonical JSON text; hashed as stored
    prev_sha256: str
    sha256: str
    created_at: datetime


class AuditReport(BaseModel):
    """The outcome of verifying one run's chain."""

    run_id: str
    entries: int
    head_sha256: str
    intact: bool
    problems: list[str]


class AuditAnchor(BaseModel):
    """A chain position recorded outside the database (the bundle's manifest): the chain's entry
    ``entries - 1`` must have hash ``head_sha256``. Entries appended later do not disturb it."""

    head_sha256: str
    entries: int | None = Field(default=None, ge=1)  # None: an older manifest that names only the hash
    source: str = "manifest anchor"


class AuditHit(BaseModel):
    """An audit entry that matches a search, with an excerpt around the match."""

    run_id: str
    seq: int
    kind: str
    excerpt: str
    rank: float
    created_at: datetime


class AuditLog(Protocol):
    """Append-only audit. Appends are idempotent by ``key`` within a run."""

    async def append(self, run_id: str, key: str, kind: str, payload: dict[str, Any]) -> AuditEntry:
        """Append an entry, or return the existing one with that key."""
        ...

    async def append_many(self, run_id: str, entries: Sequence[tuple[str, str, dict[str, Any]]]) -> list[AuditEntry]:
        """Append ``(key, kind, payload)`` entries in order, as ``append`` each (one round trip)."""
        ...

    async def entries(self, run_id: str) -> list[AuditEntry]: ...

    async def verify(self, run_id: str, *, anchor: AuditAnchor | None = None) -> AuditReport:
        """Check every link, the head recorded beside the chain (missing: tampered) and, when
        given, an ``anchor`` kept outside the store."""
        ...

    async def search(self, query: str, *, limit: int = 20) -> list[AuditHit]:
        """Entries of every run matching ``query`` (words, all required), best first."""
        ...
