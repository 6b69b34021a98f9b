"""In-memory twin of the audit log, for unit tests. Entries are frozen copies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from factory.errors import MemoryStoreError
from memory.base import AuditAnchor, AuditEntry, AuditHit, AuditReport
from memory.chain import GENESIS, canonical, link_hash, verify_chain
from memory.search_bounds import bounded_query


class InMemoryAuditLog:
    """Chains and, apart from them, each chain's head (count, last hash), as in PostgreSQL."""

    def __init__(self) -> None:
        self._chains: dict[str, list[AuditEntry]] = {}
        self._heads: dict[str, tuple[int, str]] = {}

    async def append(self, run_id: str, key: str, kind: str, payload: dict[str, Any]) -> AuditEntry:
        chain = self._chains.setdefault(run_id, [])
        for entry in chain:
            if entry.key == key:
                return entry.model_copy()
        seq, prev = self._heads.get(run_id, (0, GENESIS))
        if seq != len(chain) or (chain and chain[-1].sha256 != prev):  # as the database's guards refuse it
            raise MemoryStoreError(
                f"the audit of run {run_id} cannot be extended: its head does not match its chain;"
                f" see `factory audit verify {run_id}`"
            )
        text = canonical(payload)
        entry = AuditEntry(
            run_id=run_id,
            seq=seq,
            key=key,
            kind=kind,
            payload=text,
            prev_sha256=prev,
            sha256=link_hash(prev, run_id, seq, key, kind, text),
            created_at=datetime.now(UTC),
        )
        chain.append(entry)
        self._heads[run_id] = (len(chain), entry.sha256)
        return entry.model_copy()

    async def append_many(self, run_id: str, entries: Sequence[tuple[str, str, dict[str, Any]]]) -> list[AuditEntry]:
        return [await self.append(run_id, key, kind, payload) for key, kind, payload in entries]

    async def entries(self, run_id: str) -> list[AuditEntry]:
        return [e.model_copy() for e in self._chains.get(run_id, [])]

    async def verify(self, run_id: str, *, anchor: AuditAnchor | None = None) -> AuditReport:
        return verify_chain(run_id, self._chains.get(run_id, []), self._heads.get(run_id), anchor=anchor)

    async def search(self, query: str, *, limit: int = 20) -> list[AuditHit]:
        bounded_query(query)  # a query too large to parse is an input error, not a database one
        words = [w.lower() for w in query.split() if w.strip()]
        if not words:
            return []
        hits = []
        for chain in self._chains.values():
            for entry in chain:
                text = entry.payload.lower()
                if all(w in text for w in words):
                    at = text.find(words[0])
                    rank = sum(text.count(w) for w in words) / (1 + len(text) / 1000)
                    hits.append(
                        AuditHit(
                            run_id=entry.run_id,
                            seq=entry.seq,
                            kind=entry.kind,
                            excerpt=entry.payload[max(0, at - 80) : at + 120],
                            rank=rank,
                            created_at=entry.created_at,
                        )
                    )
        hits.sort(key=lambda h: (h.rank, h.created_at), reverse=True)
        return hits[:limit]
